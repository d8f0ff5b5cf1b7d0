//! Request heads: find the end, parse with httparse, and apply the framing rules that keep
//! request smuggling out (SPEC §6).

use super::errors::Status;

/// Most headers one request may carry.
const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: String,
    /// The request-target exactly as sent.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names as sent, values as bytes, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: BodyFraming,
    /// The client allows the connection to stay open after this request.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }

    pub fn protocol(&self) -> &'static str {
        if self.minor_version == 0 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadError {
    pub status: Status,
    pub reason: &'static str,
}

fn bad(reason: &'static str) -> HeadError {
    HeadError {
        status: Status::BadRequest,
        reason,
    }
}

/// Look for the blank line that ends a head, starting the scan at `*scanned` (updated, so
/// repeated calls on a growing buffer stay linear). A LF without its CR is refused at once.
pub fn find_head_end(buf: &[u8], scanned: &mut usize) -> Result<Option<usize>, HeadError> {
    let mut i = *scanned;
    while let Some(off) = memchr(b'\n', &buf[i..]) {
        let lf = i + off;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err(bad("bare LF in request head"));
        }
        if lf >= 3 && &buf[lf - 3..=lf] == b"\r\n\r\n" {
            *scanned = lf + 1;
            return Ok(Some(lf + 1));
        }
        i = lf + 1;
    }
    // Keep the last bytes in view: a CR may be waiting for its LF.
    *scanned = buf.len().saturating_sub(3).max(*scanned);
    Ok(None)
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// Parse a complete head (as delimited by [`find_head_end`]).
pub fn parse(head: &[u8]) -> Result<RequestHead, HeadError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError {
                status: Status::HeaderFieldsTooLarge,
                reason: "too many headers",
            })
        }
        Err(_) => return Err(bad("malformed request head")),
    }
    let method = req.method.unwrap_or_default().to_string();
    let target = req.path.unwrap_or_default().to_string();
    let minor_version = req.version.unwrap_or(1);
    if target.is_empty() || !(target.starts_with('/') || target == "*" || target.contains("://")) {
        return Err(bad("bad request target"));
    }
    let mut headers = Vec::with_capacity(req.headers.len());
    let mut lengths: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name;
        let value = h.value;
        if name.eq_ignore_ascii_case("content-length") {
            for part in value.split(|&b| b == b',') {
                let n = parse_length(trim(part)).ok_or(bad("bad Content-Length"))?;
                if lengths.is_some_and(|old| old != n) {
                    return Err(bad("differing Content-Length values"));
                }
                lengths = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            for coding in value.split(|&b| b == b',').map(trim) {
                if coding.is_empty() {
                    continue;
                }
                // Only "chunked", once, and last; anything else we cannot frame.
                if !coding.eq_ignore_ascii_case(b"chunked") || chunked {
                    return Err(bad("unsupported transfer coding"));
                }
                chunked = true;
            }
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value.split(|&b| b == b',').map(trim) {
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = trim(value).eq_ignore_ascii_case(b"100-continue");
        }
        headers.push((name.to_string(), value.to_vec()));
    }
    if transfer_encoding && !chunked {
        return Err(bad("empty Transfer-Encoding"));
    }
    if chunked && lengths.is_some() {
        return Err(bad("both Content-Length and Transfer-Encoding"));
    }
    if chunked && minor_version == 0 {
        return Err(bad("Transfer-Encoding in an HTTP/1.0 request"));
    }
    if hosts > 1 || (hosts == 0 && minor_version == 1) {
        return Err(bad("HTTP/1.1 needs exactly one Host header"));
    }
    let body = match (chunked, lengths) {
        (true, _) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let keep_alive = if minor_version == 0 {
        keep_alive_token && !close
    } else {
        !close
    };
    Ok(RequestHead {
        method,
        target,
        minor_version,
        headers,
        body,
        keep_alive,
        expect_continue: expect_continue && body != BodyFraming::None,
    })
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<RequestHead, HeadError> {
        let mut scanned = 0;
        let end = find_head_end(s.as_bytes(), &mut scanned)?.expect("complete head");
        parse(&s.as_bytes()[..end])
    }

    #[test]
    fn simple_get_keeps_alive() {
        let h = head("GET /x?y=1 HTTP/1.1\r\nHost: a\r\nX: 1\r\n\r\n").expect("valid");
        assert_eq!(h.method, "GET");
        assert_eq!(h.target, "/x?y=1");
        assert!(h.keep_alive);
        assert_eq!(h.body, BodyFraming::None);
        assert_eq!(h.header("x"), Some(&b"1"[..]));
    }

    #[test]
    fn http10_closes_unless_asked() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").expect("valid").keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .expect("valid")
                .keep_alive
        );
        assert!(
            !head("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                .expect("valid")
                .keep_alive
        );
    }

    #[test]
    fn body_framing() {
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").expect("valid");
        assert_eq!(h.body, BodyFraming::Length(5));
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n").expect("valid");
        assert_eq!(h.body, BodyFraming::Length(5));
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .expect("valid");
        assert_eq!(h.body, BodyFraming::Chunked);
    }

    #[test]
    fn smuggling_shapes_are_400() {
        for bad in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            let r = head(bad);
            assert_eq!(
                r.map(|_| ()).map_err(|e| e.status),
                Err(Status::BadRequest),
                "{bad:?}"
            );
        }
        let mut scanned = 0;
        assert!(find_head_end(b"GET / HTTP/1.1\nHost: a\r\n\r\n", &mut scanned).is_err());
    }

    #[test]
    fn head_end_is_found_across_reads() {
        let full = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest";
        let mut scanned = 0;
        let head_len = full.len() - 4;
        for cut in 1..head_len {
            let r = find_head_end(&full[..cut], &mut scanned).expect("no bare LF");
            assert_eq!(r, None, "cut {cut}");
        }
        let r = find_head_end(&full[..head_len], &mut scanned).expect("no bare LF");
        assert_eq!(r, Some(head_len));
    }
}
