//! Backend response heads: parse what the app server sent, decide the body framing on both
//! sides, and write the head the client gets.

use std::io::Write;

/// Most headers a backend response may carry.
const MAX_HEADERS: usize = 128;

/// How the backend delimits its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendBody {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// How we delimit the body toward the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 client and no length: the body ends when we close.
    UntilClose,
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub code: u16,
    pub reason: String,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BackendBody,
    /// The backend lets this connection serve another request.
    pub keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

impl std::fmt::Display for BadResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Parse a backend head from the start of `buf`: `Ok(None)` while incomplete, else the head
/// and its length in bytes.
pub fn parse(
    buf: &[u8],
    request_is_head: bool,
) -> Result<Option<(ResponseHead, usize)>, BadResponse> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(BadResponse("malformed response head")),
    };
    let code = resp.code.unwrap_or(0);
    if !(100..=999).contains(&code) {
        return Err(BadResponse("bad status code"));
    }
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut close = resp.version == Some(0);
    let mut headers = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(BadResponse("bad Content-Length"))?;
            if length.is_some_and(|old| old != n) {
                return Err(BadResponse("differing Content-Length values"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    close = false;
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding decides; anything but chunked is read until close.
            chunked = h
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
        headers.push((h.name.to_string(), h.value.to_vec()));
    }
    let no_body = request_is_head || code < 200 || code == 204 || code == 304;
    let body = if no_body {
        BackendBody::None
    } else if chunked {
        BackendBody::Chunked
    } else if let Some(n) = length {
        BackendBody::Length(n)
    } else {
        BackendBody::UntilClose
    };
    Ok(Some((
        ResponseHead {
            code,
            reason: resp.reason.unwrap_or("").to_string(),
            headers,
            keep_alive: !close && body != BackendBody::UntilClose,
            body,
        },
        len,
    )))
}

/// Choose the client-side framing: lengths pass through; chunked and close-delimited bodies
/// are chunked for HTTP/1.1 clients so the connection can stay open.
pub fn client_body(backend: BackendBody, client_minor_version: u8) -> ClientBody {
    match backend {
        BackendBody::None => ClientBody::None,
        BackendBody::Length(n) => ClientBody::Length(n),
        BackendBody::Chunked | BackendBody::UntilClose if client_minor_version >= 1 => {
            ClientBody::Chunked
        }
        BackendBody::Chunked | BackendBody::UntilClose => ClientBody::UntilClose,
    }
}

/// Hop-by-hop and framing headers: we set our own.
fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Write the head the client receives.
pub fn write_client_head(
    out: &mut Vec<u8>,
    head: &ResponseHead,
    body: ClientBody,
    keep_alive: bool,
    client_minor_version: u8,
) {
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", head.code, head.reason);
    for (name, value) in &head.headers {
        let framing = name.eq_ignore_ascii_case("content-length") && body != ClientBody::None;
        if is_hop_by_hop(name) || framing {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match body {
        ClientBody::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        ClientBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientBody::None | ClientBody::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor_version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_from_backend_heads() {
        let (h, n) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false)
            .expect("valid")
            .expect("complete");
        assert_eq!((h.code, h.body, n), (200, BackendBody::Length(3), 38));
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.body, BackendBody::Chunked);
        let (h, _) = parse(b"HTTP/1.0 200 OK\r\nX: y\r\n\r\n", false)
            .expect("valid")
            .expect("complete");
        assert_eq!(h.body, BackendBody::UntilClose);
        let (h, _) = parse(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        assert_eq!(h.body, BackendBody::None);
        assert!(matches!(parse(b"HTTP/1.1 200 OK\r\n", false), Ok(None)));
        assert!(parse(b"garbage\r\n\r\n", false).is_err());
    }

    #[test]
    fn client_head_rewrites_framing() {
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nX-A: 1\r\n\r\n",
            false,
        )
        .expect("valid")
        .expect("complete");
        let body = client_body(h.body, 1);
        let mut out = Vec::new();
        write_client_head(&mut out, &h, body, true, 1);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }
}
