//! Clients: the `curl` CLI, and a raw TLS connection (openssl crate) with a
//! small HTTP/1.1 response reader for keep-alive and malformed-input cases.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslStream, SslVerifyMode};

use super::certs::Certs;

// ---------------------------------------------------------------- curl

/// A curl invocation being built. `run()` executes it with a hard
/// `--max-time`, so it can never hang the test.
pub struct Curl {
    args: Vec<OsString>,
    urls: Vec<String>,
    max_time: u64,
}

/// What curl gave back.
pub struct CurlOut {
    /// HTTP status of the last response, None when there was none ("000").
    pub status: Option<u16>,
    /// curl's exit code (-1 if killed by a signal).
    pub exit: i32,
    /// Response body (all URLs' bodies concatenated when several).
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlOut {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn ok(&self) -> bool {
        self.exit == 0 && self.status.is_some()
    }
}

impl fmt::Debug for CurlOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = if self.body.len() > 2048 {
            format!(
                "<{} bytes> {}...",
                self.body.len(),
                String::from_utf8_lossy(&self.body[..512])
            )
        } else {
            String::from_utf8_lossy(&self.body).into_owned()
        };
        f.debug_struct("CurlOut")
            .field("status", &self.status)
            .field("exit", &self.exit)
            .field("stderr", &self.stderr)
            .field("body", &body)
            .finish()
    }
}

/// `curl -sS --cacert ca.crt --resolve localhost:PORT:127.0.0.1 https://localhost:PORT{path}`
pub fn curl(certs: &Certs, port: u16, path: &str) -> Curl {
    Curl::new(&format!("https://localhost:{port}{path}"))
        .arg("--cacert")
        .arg(&certs.ca_crt)
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
}

impl Curl {
    /// A bare curl for one URL (no CA, no --resolve).
    pub fn new(url: &str) -> Curl {
        Curl {
            // -q must come first: ignore any ~/.curlrc.
            args: vec!["-q".into(), "-sS".into(), "--noproxy".into(), "*".into()],
            urls: vec![url.to_string()],
            max_time: 60,
        }
    }

    pub fn arg(mut self, a: impl Into<OsString>) -> Curl {
        self.args.push(a.into());
        self
    }

    pub fn arg_path(self, a: &Path) -> Curl {
        self.arg(a.as_os_str().to_os_string())
    }

    /// Add another URL to the same invocation (connection reuse).
    pub fn url(mut self, url: &str) -> Curl {
        self.urls.push(url.to_string());
        self
    }

    pub fn client_cert(self, (crt, key): (&Path, &Path)) -> Curl {
        self.arg("--cert").arg_path(crt).arg("--key").arg_path(key)
    }

    pub fn max_time(mut self, secs: u64) -> Curl {
        self.max_time = secs;
        self
    }

    pub fn run(self) -> CurlOut {
        let mut cmd = Command::new("curl");
        cmd.args(&self.args)
            .arg("--max-time")
            .arg(self.max_time.to_string())
            .arg("--connect-timeout")
            .arg("10")
            .arg("-w")
            .arg("\n%{http_code}")
            .args(&self.urls)
            .stdin(Stdio::null());
        let out = cmd.output().expect("run curl (is it installed?)");
        let mut stdout = out.stdout;
        // stdout = body ++ "\n" ++ code (per URL; the last code wins)
        let nl = stdout.iter().rposition(|&b| b == b'\n');
        let (body, code) = match nl {
            Some(i) => {
                let code = String::from_utf8_lossy(&stdout[i + 1..]).trim().to_string();
                stdout.truncate(i);
                (stdout, code)
            }
            None => (
                Vec::new(),
                String::from_utf8_lossy(&stdout).trim().to_string(),
            ),
        };
        let status = code.parse::<u16>().ok().filter(|&c| c != 0);
        CurlOut {
            status,
            exit: out.status.code().unwrap_or(-1),
            body,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

// ---------------------------------------------------------------- raw TLS

/// One parsed HTTP response.
#[derive(Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("reason", &self.reason)
            .field("headers", &self.headers)
            .field(
                "body",
                &String::from_utf8_lossy(&self.body[..self.body.len().min(2048)]),
            )
            .finish()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut line = Vec::new();
    let n = r.take(64 * 1024).read_until(b'\n', &mut line)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before a complete response head",
        ));
    }
    while line.last() == Some(&b'\n') || line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Read one HTTP/1.x response (skipping 1xx interim responses) from `r`.
/// `head_only` is for answers to HEAD requests.
pub fn read_response<R: BufRead>(r: &mut R, head_only: bool) -> io::Result<Response> {
    loop {
        let status_line = read_line(r)?;
        let mut parts = status_line.splitn(3, ' ');
        let proto = parts.next().unwrap_or("");
        if !proto.starts_with("HTTP/1.") {
            return Err(bad(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let line = read_line(r)?;
            if line.is_empty() {
                break;
            }
            let (k, v) = line
                .split_once(':')
                .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut resp = Response {
            status,
            reason,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 {
            return Ok(resp);
        }
        let chunked = resp
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        if chunked {
            loop {
                let size_line = read_line(r)?;
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .map_err(|_| bad(format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    // trailers until an empty line
                    while !read_line(r)?.is_empty() {}
                    break;
                }
                let start = resp.body.len();
                resp.body.resize(start + size, 0);
                r.read_exact(&mut resp.body[start..])?;
                let crlf = read_line(r)?;
                if !crlf.is_empty() {
                    return Err(bad("missing CRLF after chunk"));
                }
            }
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl
                .parse()
                .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
            resp.body.resize(n, 0);
            r.read_exact(&mut resp.body)?;
        } else {
            // Delimited by close. A TLS peer may close without close_notify.
            let mut buf = [0u8; 16 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => resp.body.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
            }
        }
        return Ok(resp);
    }
}

/// Options for a raw TLS connection.
pub struct TlsOpts<'a> {
    /// Verify the server against this CA (and the name "localhost").
    pub ca: Option<&'a Path>,
    pub client: Option<(&'a Path, &'a Path)>,
    /// SNI / verified host name.
    pub host: &'a str,
    pub timeout: Duration,
}

/// A client TLS connection to 127.0.0.1:port.
pub struct TlsConn {
    r: BufReader<SslStream<TcpStream>>,
    pub port: u16,
}

impl TlsConn {
    /// Connect, verifying the server with the test CA, SNI "localhost".
    pub fn connect(port: u16, certs: &Certs) -> Result<TlsConn, String> {
        Self::connect_opts(
            port,
            &TlsOpts {
                ca: Some(&certs.ca_crt),
                client: None,
                host: "localhost",
                timeout: Duration::from_secs(30),
            },
        )
    }

    /// Connect presenting a client certificate.
    pub fn connect_with_client(
        port: u16,
        certs: &Certs,
        client: (&Path, &Path),
    ) -> Result<TlsConn, String> {
        Self::connect_opts(
            port,
            &TlsOpts {
                ca: Some(&certs.ca_crt),
                client: Some(client),
                host: "localhost",
                timeout: Duration::from_secs(30),
            },
        )
    }

    pub fn connect_opts(port: u16, o: &TlsOpts<'_>) -> Result<TlsConn, String> {
        let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
        match o.ca {
            Some(ca) => b
                .set_ca_file(ca)
                .map_err(|e| format!("CA {}: {e}", ca.display()))?,
            None => b.set_verify(SslVerifyMode::NONE),
        }
        if let Some((crt, key)) = o.client {
            b.set_certificate_chain_file(crt)
                .map_err(|e| format!("client cert {}: {e}", crt.display()))?;
            b.set_private_key_file(key, SslFiletype::PEM)
                .map_err(|e| format!("client key {}: {e}", key.display()))?;
        }
        let connector = b.build();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_read_timeout(Some(o.timeout)).ok();
        tcp.set_write_timeout(Some(o.timeout)).ok();
        let mut cfg = connector.configure().map_err(|e| e.to_string())?;
        if o.ca.is_none() {
            cfg.set_verify_hostname(false);
        }
        let ssl = cfg
            .connect(o.host, tcp)
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        Ok(TlsConn {
            r: BufReader::with_capacity(64 * 1024, ssl),
            port,
        })
    }

    /// Wrap a connection made elsewhere (a shared connector, see lifecycle.rs).
    pub fn from_stream(ssl: SslStream<TcpStream>, port: u16) -> TlsConn {
        TlsConn {
            r: BufReader::with_capacity(64 * 1024, ssl),
            port,
        }
    }

    pub fn stream(&self) -> &SslStream<TcpStream> {
        self.r.get_ref()
    }

    pub fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let s = self.r.get_mut();
        s.write_all(data)?;
        s.flush()
    }

    pub fn read_response(&mut self) -> io::Result<Response> {
        read_response(&mut self.r, false)
    }

    /// `GET path HTTP/1.1` with Host localhost:PORT; read the answer.
    pub fn get(&mut self, path: &str) -> io::Result<Response> {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nUser-Agent: e2e-test\r\n\r\n",
            self.port
        );
        self.send(req.as_bytes())?;
        self.read_response()
    }

    /// True when the server closed the connection (EOF or error within
    /// `timeout`, and no further data).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let _ = self.r.get_ref().get_ref().set_read_timeout(Some(timeout));
        let mut b = [0u8; 1];
        !matches!(self.r.read(&mut b), Ok(n) if n > 0)
    }
}
