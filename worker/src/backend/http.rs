//! The request head an HTTP/1.1 backend receives: the client's head without hop-by-hop
//! headers, plus what the backend cannot see for itself (client address, TLS, client cert).

use std::io::Write;

use crate::http::request::RequestHead;
use crate::session::ConnInfo;

/// How the body follows the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// Headers that belong to one hop, and ours to set: a client's own copies are dropped so it
/// cannot pose as another address or a verified certificate.
const DROPPED: [&str; 14] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-ssl-client-dn",
    "x-ssl-client-verify",
];

/// The `X-Forwarded-*` and `X-SSL-*` families describe the client and its certificate to
/// the backend: only we may set them (a backend trusting `X-SSL-Client-Cert` would be
/// fooled otherwise).
fn is_ours(name: &str) -> bool {
    let lower = |prefix: &str| {
        name.len() >= prefix.len() && name[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    lower("x-forwarded-") || lower("x-ssl-")
}

pub fn request_head(head: &RequestHead, info: &ConnInfo, body: BodyFraming) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let _ = write!(out, "{} {} HTTP/1.1\r\n", head.method, head.target);
    // Headers the client named in Connection are hop-by-hop too.
    let connection_tokens: Vec<&[u8]> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let mut host = None;
    for (name, value) in &head.headers {
        // Names with '_' are dropped as on the uwsgi side (and by nginx): CGI-style servers
        // would read `X_Forwarded_For` as `X-Forwarded-For`.
        let dropped = DROPPED.iter().any(|d| name.eq_ignore_ascii_case(d))
            || is_ours(name)
            || name.contains('_')
            || connection_tokens
                .iter()
                .any(|t| t.eq_ignore_ascii_case(name.as_bytes()));
        if dropped {
            continue;
        }
        if name.eq_ignore_ascii_case("host") {
            host = Some(value.as_slice());
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if host.is_none() {
        // HTTP/1.0 clients may omit Host; an HTTP/1.1 backend requires one.
        let fallback = info.sni.clone().unwrap_or_else(|| info.local.to_string());
        let _ = write!(out, "Host: {fallback}\r\n");
    }
    let _ = write!(out, "X-Forwarded-For: {}\r\n", info.peer.ip());
    out.extend_from_slice(b"X-Forwarded-Proto: https\r\n");
    if let Some(h) = host {
        out.extend_from_slice(b"X-Forwarded-Host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    match &info.client_dn {
        Some(dn) => {
            out.extend_from_slice(b"X-SSL-Client-Verify: SUCCESS\r\n");
            let _ = write!(out, "X-SSL-Client-DN: {dn}\r\n");
        }
        None => out.extend_from_slice(b"X-SSL-Client-Verify: NONE\r\n"),
    }
    match body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;

    fn info() -> ConnInfo {
        ConnInfo {
            peer: "10.0.0.7:5555".parse().expect("addr"),
            local: "127.0.0.1:8443".parse().expect("addr"),
            sni: Some("example.com".into()),
            tls_version: "TLSv1.3",
            cipher: "X",
            reused: false,
            client_dn: Some("/O=Test/CN=client".into()),
            client_cert: None,
        }
    }

    #[test]
    fn hop_by_hop_and_spoofed_headers_are_replaced() {
        let raw = b"POST /p?q HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nX-Forwarded-For: 6.6.6.6\r\nX-SSL-Client-Verify: SUCCESS\r\nX-SSL-Client-Cert: forged\r\nX-Forwarded-Port: 1\r\nX_Forwarded_For: 7.7.7.7\r\nContent-Length: 3\r\nKeep-Alive: 5\r\nX-App: yes\r\n\r\n";
        let head = request::parse(raw).expect("valid");
        let out =
            String::from_utf8(request_head(&head, &info(), BodyFraming::Length(3))).expect("utf8");
        assert!(
            out.starts_with("POST /p?q HTTP/1.1\r\nHost: example.com\r\nX-App: yes\r\n"),
            "{out}"
        );
        for gone in [
            "X-Secret",
            "6.6.6.6",
            "Keep-Alive",
            "Connection",
            "forged",
            "Port",
        ] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        assert!(out.contains("X-Forwarded-For: 10.0.0.7\r\n"));
        assert!(out.contains("X-Forwarded-Proto: https\r\n"));
        assert!(out.contains("X-Forwarded-Host: example.com\r\n"));
        assert!(out.contains("X-SSL-Client-DN: /O=Test/CN=client\r\n"));
        assert!(out.ends_with("Content-Length: 3\r\n\r\n"));
    }
}
