//! The built-in responder: with no `http-to`, every request gets a short page describing the
//! request and the TLS session. It serves the quickstart and health checks.

use std::fmt::Write;

use crate::http::request::RequestHead;
use crate::session::ConnInfo;

pub fn page(head: &RequestHead, info: &ConnInfo) -> String {
    let mut body = String::with_capacity(320);
    let _ = writeln!(
        body,
        "uwsgi-master: built-in responder (no http-to configured)"
    );
    let _ = writeln!(
        body,
        "request: {} {} {}",
        head.method,
        head.target,
        head.protocol()
    );
    let _ = writeln!(body, "tls-version: {}", info.tls_version);
    let _ = writeln!(body, "cipher: {}", info.cipher);
    let _ = writeln!(body, "sni: {}", info.sni.as_deref().unwrap_or("-"));
    let _ = writeln!(
        body,
        "client-cert: {}",
        info.client_dn.as_deref().unwrap_or("-")
    );
    let _ = writeln!(
        body,
        "session-reused: {}",
        if info.reused { "yes" } else { "no" }
    );
    let _ = writeln!(body, "worker-pid: {}", std::process::id());
    body
}

/// The whole response.
pub fn response(head: &RequestHead, info: &ConnInfo, keep_alive: bool) -> Vec<u8> {
    let body = page(head, info);
    let mut out = String::with_capacity(body.len() + 128);
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !keep_alive {
        out.push_str("Connection: close\r\n");
    } else if head.minor_version == 0 {
        out.push_str("Connection: keep-alive\r\n");
    }
    out.push_str("\r\n");
    if !head.is_head() {
        out.push_str(&body);
    }
    out.into_bytes()
}
