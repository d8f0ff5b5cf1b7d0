//! The CGI-style vars a uwsgi backend receives for one request (SPEC §5).

use std::borrow::Cow;

use crate::backend::uwsgi::{Packet, VarsTooLarge};
use crate::http::request::RequestHead;
use crate::session::ConnInfo;

/// Build the uwsgi packet for `head` on this connection.
pub fn request_packet(
    head: &RequestHead,
    info: &ConnInfo,
    content_length: u64,
    export_cert: bool,
) -> Result<Vec<u8>, VarsTooLarge> {
    let mut p = Packet::new();
    let (path, query) = split_target(&head.target);
    p.var(b"REQUEST_METHOD", head.method.as_bytes());
    p.var(b"REQUEST_URI", head.target.as_bytes());
    p.var(b"PATH_INFO", &percent_decode(path.as_bytes()));
    p.var(b"QUERY_STRING", query.as_bytes());
    p.var(b"SERVER_PROTOCOL", head.protocol().as_bytes());
    p.var(b"SCRIPT_NAME", b"");
    let server_name = head
        .header("host")
        .map(host_without_port)
        .or(info.sni.as_deref().map(str::as_bytes));
    match server_name {
        Some(name) => p.var(b"SERVER_NAME", name),
        None => p.var_fmt(b"SERVER_NAME", info.local.ip()),
    }
    p.var_fmt(b"SERVER_PORT", info.local.port());
    p.var_fmt(b"REMOTE_ADDR", info.peer.ip());
    p.var_fmt(b"REMOTE_PORT", info.peer.port());
    if let Some(ct) = head.header("content-type") {
        p.var(b"CONTENT_TYPE", ct);
    }
    if content_length > 0 || head.header("content-length").is_some() {
        p.var_fmt(b"CONTENT_LENGTH", content_length);
    }
    p.var(b"HTTPS", b"on");
    p.var(b"UWSGI_SCHEME", b"https");
    p.var(b"UWSGI_ROUTER", b"http");
    if let Some(dn) = &info.client_dn {
        p.var(b"HTTPS_DN", dn.as_bytes());
    }
    if export_cert {
        if let Some(cert) = &info.client_cert {
            p.var(b"HTTPS_CC", &cert.pem);
            p.var(b"HTTPS_CLIENT_CERTIFICATE", &cert.der);
        }
    }
    header_vars(&mut p, head);
    p.finish()
}

/// One `HTTP_*` var per header name; repeated headers are joined with ", " (cookies with
/// "; ", the only separator cookie parsers accept). Names with '_' are dropped, as nginx
/// does: `X_Forwarded_For` would otherwise pose as `X-Forwarded-For`. Transfer-Encoding
/// is dropped: the backend gets the body de-chunked.
fn header_vars(p: &mut Packet, head: &RequestHead) {
    let headers = &head.headers;
    for (i, (name, _)) in headers.iter().enumerate() {
        if name.contains('_')
            || name.eq_ignore_ascii_case("content-type")
            || name.eq_ignore_ascii_case("content-length")
            // The body reaches the backend de-chunked, with CONTENT_LENGTH: a
            // Transfer-Encoding var would make WSGI frameworks read it as empty.
            || name.eq_ignore_ascii_case("transfer-encoding")
            || headers[..i]
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            continue;
        }
        let mut key = Vec::with_capacity(5 + name.len());
        key.extend_from_slice(b"HTTP_");
        key.extend(name.bytes().map(|b| match b {
            b'-' => b'_',
            b => b.to_ascii_uppercase(),
        }));
        let sep: &[u8] = if name.eq_ignore_ascii_case("cookie") {
            b"; "
        } else {
            b", "
        };
        let token = p.begin_var(&key);
        let mut first = true;
        for (_, value) in headers[i..]
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            if !first {
                p.push(sep);
            }
            p.push(value);
            first = false;
        }
        p.end_var(token);
    }
}

/// Path and query of a request-target (origin or absolute form).
pub fn split_target(target: &str) -> (&str, &str) {
    let origin = match target.find("://") {
        Some(scheme_end) => {
            let after = &target[scheme_end + 3..];
            after.find('/').map_or("/", |p| &after[p..])
        }
        None => target,
    };
    match origin.split_once('?') {
        Some((path, query)) => (path, query),
        None => (origin, ""),
    }
}

fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        // [v6]:port
        return host
            .iter()
            .position(|&b| b == b']')
            .map_or(host, |end| &host[..=end]);
    }
    host.iter()
        .rposition(|&b| b == b':')
        .map_or(host, |colon| &host[..colon])
}

/// `%XX` decoded; a `%` not followed by two hex digits stays as it is.
pub fn percent_decode(input: &[u8]) -> Cow<'_, [u8]> {
    if !input.contains(&b'%') {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_into_path_and_query() {
        assert_eq!(split_target("/x?y=1"), ("/x", "y=1"));
        assert_eq!(split_target("/x"), ("/x", ""));
        assert_eq!(split_target("http://h:1/p?q"), ("/p", "q"));
        assert_eq!(split_target("http://h"), ("/", ""));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(&*percent_decode(b"/a%20b"), b"/a b");
        assert_eq!(&*percent_decode(b"/%zz%2"), b"/%zz%2");
        assert_eq!(&*percent_decode(b"%41"), b"A");
        assert!(matches!(
            percent_decode(b"/plain"),
            Cow::Borrowed(b"/plain")
        ));
    }

    #[test]
    fn host_port_is_stripped() {
        assert_eq!(host_without_port(b"example.com:8443"), b"example.com");
        assert_eq!(host_without_port(b"[::1]:8443"), b"[::1]");
        assert_eq!(host_without_port(b"example.com"), b"example.com");
    }
}
