//! `http-to-https`: a plain-HTTP listener that answers every request with
//! `301 Moved Permanently` to the same host and target over https, then closes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::http::errors::Status;
use crate::http::request::{self, RequestHead};
use crate::settings::Settings;

/// How long we wait, after answering, for the client to close first (so that a request
/// body still in flight does not turn our close into a reset that loses the answer).
const LINGER: Duration = Duration::from_millis(200);

/// Serve one connection: read one request head (within the head timeout, whole), answer,
/// close.
pub fn serve(mut tcp: TcpStream, https_port: u16, settings: &Settings) {
    let timeout = settings.timeouts.headers;
    if tcp.set_write_timeout(Some(timeout)).is_err() {
        return;
    }
    let answer = match read_head(&mut tcp, settings.buffer_size, Instant::now() + timeout) {
        Ok(Some(head)) => match request::parse(&head) {
            Ok(head) => match location(&head, https_port) {
                Some(url) => moved(&head, &url),
                None => Status::BadRequest.response(),
            },
            Err(e) => e.status.response(),
        },
        Ok(None) => return,
        Err(status) => status.response(),
    };
    if tcp.write_all(&answer).is_err() {
        return;
    }
    let _ = tcp.shutdown(Shutdown::Write);
    linger(&mut tcp);
}

/// The head, once complete. Ok(None): the client closed or sent nothing in time.
fn read_head(
    tcp: &mut TcpStream,
    max: usize,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, Status> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut scanned = 0;
    loop {
        match request::find_head_end(&buf, &mut scanned) {
            Ok(Some(end)) if end <= max => {
                buf.truncate(end);
                return Ok(Some(buf));
            }
            Ok(Some(_)) => return Err(Status::HeaderFieldsTooLarge),
            Ok(None) if buf.len() >= max => return Err(Status::HeaderFieldsTooLarge),
            Ok(None) => {}
            Err(e) => return Err(e.status),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(Status::RequestTimeout)
            };
        }
        if tcp.set_read_timeout(Some(left)).is_err() {
            return Ok(None);
        }
        match tcp.read(&mut chunk) {
            Ok(0) => return Ok(None),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Err(Status::RequestTimeout);
            }
            Err(_) => return Ok(None),
        }
    }
}

/// Read what the client still sends until it closes, briefly and boundedly.
fn linger(tcp: &mut TcpStream) {
    let deadline = Instant::now() + LINGER;
    let mut sink = [0u8; 4096];
    let mut total = 0;
    while total < 64 * 1024 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match tcp.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => total += n,
        }
    }
}

/// `https://<host>[:port]<target>`: the host from the absolute-form target or the Host
/// header, without its port; the port of the https listener unless it is 443. None: no
/// usable host.
pub fn location(head: &RequestHead, https_port: u16) -> Option<String> {
    let (authority, path) = match head
        .target
        .strip_prefix("http://")
        .or_else(|| head.target.strip_prefix("https://"))
    {
        Some(rest) => match rest.find(['/', '?']) {
            Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
            None => (rest.to_string(), String::new()),
        },
        None => {
            let host = std::str::from_utf8(head.header("host")?).ok()?.trim();
            (host.to_string(), head.target.clone())
        }
    };
    let host = host_without_port(&authority)?;
    let path = match path.as_str() {
        "" | "*" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Some(if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    })
}

/// `example.com:80` → `example.com`, `[::1]:80` → `[::1]`; None for anything that is not a
/// plain host name or IP literal (empty, userinfo, spaces, a bad port).
fn host_without_port(authority: &str) -> Option<&str> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (
            host,
            rest.strip_prefix(':')
                .or(Some(rest).filter(|r| r.is_empty()))?,
        )
    } else {
        let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return None;
        }
        (host, port)
    };
    if !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return None;
    }
    Some(host)
}

fn moved(head: &RequestHead, url: &str) -> Vec<u8> {
    let body = format!("Moved Permanently: {url}\n");
    let mut out = format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {url}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head.is_head() {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> RequestHead {
        request::parse(raw.as_bytes()).expect("valid head")
    }

    #[test]
    fn locations() {
        let h = head("GET /a/b?x=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n");
        assert_eq!(
            location(&h, 443).as_deref(),
            Some("https://example.com/a/b?x=1")
        );
        assert_eq!(
            location(&h, 8443).as_deref(),
            Some("https://example.com:8443/a/b?x=1")
        );
        let h = head("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n");
        assert_eq!(location(&h, 443).as_deref(), Some("https://[::1]/"));
        let h = head("GET http://other.example:80/p HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!(
            location(&h, 443).as_deref(),
            Some("https://other.example/p")
        );
        let h = head("GET / HTTP/1.0\r\n\r\n");
        assert_eq!(location(&h, 443), None);
    }

    #[test]
    fn bad_hosts_are_refused() {
        for host in [
            "",
            "a b",
            "user@example.com",
            "example.com:x",
            "[::1",
            "[zz]",
            "ex/ample",
            "example.com:123456",
        ] {
            let h = head(&format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n"));
            assert_eq!(location(&h, 443), None, "{host:?}");
        }
    }

    #[test]
    fn head_requests_get_no_body() {
        let h = head("HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
        let out = String::from_utf8(moved(&h, "https://a/")).expect("utf8");
        assert!(out.ends_with("\r\n\r\n"), "{out}");
        assert!(out.contains("Location: https://a/\r\n"));
        let h = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let out = String::from_utf8(moved(&h, "https://a/")).expect("utf8");
        assert!(out.starts_with("HTTP/1.1 301 Moved Permanently\r\n"));
        assert!(out.ends_with("Moved Permanently: https://a/\n"));
    }
}
