//! Forwarding one request to a uwsgi backend and streaming its answer back.

use std::io::{ErrorKind, Read, Write};

use crate::backend::BackendStream;
use crate::cgi;
use crate::conn::{is_timeout, Conn, CopyError, End, READ_CHUNK};
use crate::http::chunked::{Decoder, Step};
use crate::http::errors::Status;
use crate::http::request::{BodyFraming, RequestHead};
use crate::http::response::{self, BackendBody, ClientBody, ResponseHead};

/// Largest response head we accept from a backend.
const MAX_BACKEND_HEAD: usize = 64 * 1024;

/// Forward `head` (its body still to be read from the client). Ok((keep going, bytes sent)).
pub fn forward(
    conn: &mut Conn<'_>,
    head: &RequestHead,
    keep_alive: bool,
) -> Result<(bool, u64), End> {
    let shared = conn.shared;
    let settings = &shared.settings;
    let timeouts = settings.timeouts;
    let buffered_body = match head.body {
        BodyFraming::Chunked => {
            conn.send_continue(head)?;
            let limit = settings.max_body.map_or(settings.chunked_input_limit, |m| {
                m.min(settings.chunked_input_limit)
            });
            Some(conn.read_chunked(limit)?)
        }
        _ => None,
    };
    let content_length = match (&buffered_body, head.body) {
        (Some(b), _) => b.len() as u64,
        (None, BodyFraming::Length(n)) => n,
        (None, _) => 0,
    };
    let packet = cgi::request_packet(head, &conn.info, content_length, conn.listener.export_cert)
        .map_err(|_| End::Answer(Status::HeaderFieldsTooLarge))?;
    let (mut backend, addr) = shared
        .backends
        .connect(timeouts.connect)
        .map_err(|(e, addr)| {
            log::warn!("{}: backend {addr} unreachable: {e}", conn.info.peer);
            End::Answer(Status::BadGateway)
        })?;
    let addr = addr.to_string();
    backend
        .set_timeouts(timeouts.backend)
        .map_err(|_| End::Answer(Status::BadGateway))?;

    // Send the request. A backend that stops reading early may still have answered (413 and
    // the like): read its answer anyway, but the client body is then unconsumed: close.
    let mut body_consumed = true;
    let mut sent = backend.write_all(&packet).is_ok();
    if sent {
        match (&buffered_body, head.body) {
            (Some(b), _) => sent = backend.write_all(b).is_ok(),
            (None, BodyFraming::Length(n)) => {
                conn.send_continue(head)?;
                match conn.copy_body(n, &mut backend) {
                    Ok(()) => {}
                    Err(CopyError::Client) => return Err(End::Client),
                    Err(CopyError::Sink) => {
                        sent = false;
                        body_consumed = false;
                    }
                }
            }
            _ => {}
        }
    } else {
        body_consumed = head.body == BodyFraming::None;
    }
    if !sent {
        log::debug!(
            "{}: backend {addr} stopped reading the request",
            conn.info.peer
        );
    }

    let mut rbuf = std::mem::take(conn.scratch);
    let result = relay_response(
        conn,
        head,
        &mut backend,
        &mut rbuf,
        &addr,
        keep_alive && body_consumed,
    );
    *conn.scratch = rbuf;
    result
}

/// Read the backend's head, write ours, then stream the body.
fn relay_response(
    conn: &mut Conn<'_>,
    head: &RequestHead,
    backend: &mut BackendStream,
    rbuf: &mut Vec<u8>,
    addr: &str,
    keep_alive: bool,
) -> Result<(bool, u64), End> {
    let peer = conn.info.peer;
    rbuf.clear();
    let (resp, head_len) = loop {
        match response::parse(rbuf, head.is_head()) {
            Ok(Some(parsed)) => break parsed,
            Ok(None) if rbuf.len() >= MAX_BACKEND_HEAD => {
                log::warn!("{peer}: backend {addr} sent a head over {MAX_BACKEND_HEAD} bytes");
                return Err(End::Answer(Status::BadGateway));
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!("{peer}: backend {addr}: {e}");
                return Err(End::Answer(Status::BadGateway));
            }
        }
        match read_into(backend, rbuf) {
            Ok(0) => {
                log::warn!("{peer}: backend {addr} closed before a complete response head");
                return Err(End::Answer(Status::BadGateway));
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                log::warn!("{peer}: backend {addr} silent past http-timeout");
                return Err(End::Answer(Status::GatewayTimeout));
            }
            Err(e) => {
                log::warn!("{peer}: backend {addr}: {e}");
                return Err(End::Answer(Status::BadGateway));
            }
        }
    };
    let body = response::client_body(resp.body, head.minor_version);
    let keep_alive = keep_alive && body != ClientBody::UntilClose && !conn.shared.stop_requested();
    let mut out = Vec::with_capacity(512);
    response::write_client_head(&mut out, &resp, body, keep_alive, head.minor_version);
    rbuf.drain(..head_len);
    let sent = stream_body(conn, &resp, body, backend, rbuf, out).map_err(|e| {
        log::debug!("{peer}: response from backend {addr} cut short: {e}");
        End::Client
    })?;
    Ok((keep_alive, sent))
}

/// Copy the body; `pending` is what the client gets first (our head), `rbuf` holds body
/// bytes already read from the backend.
fn stream_body(
    conn: &mut Conn<'_>,
    resp: &ResponseHead,
    body: ClientBody,
    backend: &mut BackendStream,
    rbuf: &mut Vec<u8>,
    mut pending: Vec<u8>,
) -> std::io::Result<u64> {
    let mut client = Counting {
        inner: &mut conn.tls,
        count: 0,
    };
    let client = &mut client;
    match resp.body {
        BackendBody::None => client.send(&pending),
        BackendBody::Length(mut left) => loop {
            let take = (left.min(rbuf.len() as u64)) as usize;
            pending.extend_from_slice(&rbuf[..take]);
            left -= take as u64;
            rbuf.clear();
            client.send(&pending)?;
            pending.clear();
            if left == 0 {
                return Ok(client.count);
            }
            if read_into(backend, rbuf)? == 0 {
                return Err(ErrorKind::UnexpectedEof.into());
            }
        },
        BackendBody::Chunked => {
            let mut decoder = Decoder::new();
            let mut data = Vec::with_capacity(READ_CHUNK);
            loop {
                let mut pos = 0;
                while !decoder.is_done() {
                    let (n, step) = decoder
                        .step(&rbuf[pos..])
                        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))?;
                    pos += n;
                    match step {
                        Step::Data(d) => data.extend_from_slice(d),
                        Step::Framing if n == 0 => break,
                        Step::Framing | Step::Done => {}
                    }
                }
                rbuf.drain(..pos);
                emit(&mut pending, &data, body);
                data.clear();
                if decoder.is_done() {
                    finish(&mut pending, body);
                    return client.send(&pending);
                }
                client.send(&pending)?;
                pending.clear();
                if read_into(backend, rbuf)? == 0 {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
            }
        }
        BackendBody::UntilClose => loop {
            emit(&mut pending, rbuf, body);
            rbuf.clear();
            let n = read_into(backend, rbuf)?;
            if n == 0 {
                finish(&mut pending, body);
                return client.send(&pending);
            }
            client.send(&pending)?;
            pending.clear();
        },
    }
}

/// Append body bytes in the client's framing.
fn emit(out: &mut Vec<u8>, data: &[u8], body: ClientBody) {
    if data.is_empty() {
        return;
    }
    if body == ClientBody::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

fn finish(out: &mut Vec<u8>, body: ClientBody) {
    if body == ClientBody::Chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
}

/// Read once from the backend, appending to `buf`.
fn read_into(backend: &mut BackendStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let len = buf.len();
    buf.resize(len + READ_CHUNK * 4, 0);
    let r = backend.read(&mut buf[len..]);
    buf.truncate(len + *r.as_ref().unwrap_or(&0));
    r
}

/// The client stream, counting what we send for the scoreboard.
struct Counting<'a, W: Write> {
    inner: &'a mut W,
    count: u64,
}

impl<W: Write> Counting<'_, W> {
    /// Write everything; Ok(total so far).
    fn send(&mut self, data: &[u8]) -> std::io::Result<u64> {
        self.inner.write_all(data)?;
        self.count += data.len() as u64;
        Ok(self.count)
    }
}
