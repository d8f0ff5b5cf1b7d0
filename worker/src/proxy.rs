//! Forwarding one request to a backend (uwsgi protocol or HTTP/1.1) and streaming its answer
//! back.

use std::io::{ErrorKind, Write};
use std::time::{Duration, Instant};

use crate::backend::http::{self as http_backend, BodyFraming as BackendFraming};
use crate::backend::{BackendStream, Connected};
use crate::cgi;
use crate::conn::{is_timeout, Answered, Conn, CopyError, End, READ_CHUNK};
use crate::http::chunked::{Decoder, Step};
use crate::http::errors::Status;
use crate::http::request::{BodyFraming, RequestHead};
use crate::http::response::{self, BackendBody, ClientBody, ResponseHead};
use crate::settings::BackendAddr;

/// Largest response head we accept from a backend.
const MAX_BACKEND_HEAD: usize = 64 * 1024;

/// A request sent to its backend, waiting for the answer without a thread: the backend's
/// fd waits in the worker's shared epoll set, and whichever thread sees it readable relays
/// the answer. On one core this lets a thread go on to other clients while the backend
/// works, as an event loop would, instead of sleeping on every backend read.
pub struct Awaiting {
    pub head: RequestHead,
    /// When the request's head was complete (for the access log).
    pub started: Instant,
    pub wait: BackendWait,
}

pub struct BackendWait {
    pub backend: BackendStream,
    /// Its index in the `http-to` list.
    index: usize,
    /// HTTP backends: the request head, sent again on a fresh connection when a pooled one
    /// turns out dead before answering a request without body. None for uwsgi.
    http_request: Option<Vec<u8>>,
    reused: bool,
    /// The client connection may serve another request after this one.
    keep_alive: bool,
    /// The answer's head must have begun by then (`http-timeout`), else 504.
    pub deadline: Instant,
}

/// A request written to a backend.
struct Sent {
    stream: BackendStream,
    /// The client's body was read to its end (else the client connection must close).
    body_consumed: bool,
    http_request: Option<Vec<u8>>,
    /// The stream came from the idle pool.
    reused: bool,
}

/// Send `head` (its body read from the client now) to a backend.
pub fn forward(
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    keep_alive: bool,
) -> Result<BackendWait, End> {
    let shared = conn.shared;
    let timeouts = shared.settings.timeouts;
    let backend = shared
        .backends
        .connect(timeouts.connect)
        .map_err(|(e, addr)| {
            log::warn!("{}: backend {addr} unreachable: {e}", conn.info.peer);
            End::Answer(Status::BadGateway)
        })?;
    let Connected {
        index,
        addr,
        mut stream,
        reused,
    } = backend;
    stream.set_timeouts(timeouts.backend);
    let sent = if addr.is_http() {
        send_http(conn, head, (index, addr), stream, reused)?
    } else {
        send_uwsgi(conn, head, stream)?
    };
    Ok(BackendWait {
        backend: sent.stream,
        index,
        http_request: sent.http_request,
        reused: sent.reused,
        keep_alive: keep_alive && sent.body_consumed,
        deadline: Instant::now() + timeouts.backend,
    })
}

/// uwsgi: one request per connection, vars first, and a body of known length.
fn send_uwsgi(
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    mut stream: BackendStream,
) -> Result<Sent, End> {
    let settings = &conn.shared.settings;
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
    // A backend that stops reading early may still have answered (413 and the like): read
    // its answer anyway, but the client's body is then unconsumed: close after it.
    let mut body_consumed = true;
    if stream.write_all(&packet).is_err() {
        body_consumed = head.body == BodyFraming::None;
    } else {
        match (&buffered_body, head.body) {
            (Some(b), _) => {
                let _ = stream.write_all(b);
            }
            (None, BodyFraming::Length(n)) => {
                conn.send_continue(head)?;
                match conn.copy_body(n, &mut stream) {
                    Ok(()) => {}
                    Err(CopyError::Sink) => body_consumed = false,
                    Err(e) => return Err(e.into_end()),
                }
            }
            _ => {}
        }
    }
    Ok(Sent {
        stream,
        body_consumed,
        http_request: None,
        reused: false,
    })
}

/// HTTP/1.1: the body streams in its own framing; the request head is kept for one retry
/// on a fresh connection.
fn send_http(
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    (index, addr): (usize, &BackendAddr),
    mut stream: BackendStream,
    mut reused: bool,
) -> Result<Sent, End> {
    let framing = match head.body {
        BodyFraming::None => BackendFraming::None,
        BodyFraming::Length(n) => BackendFraming::Length(n),
        BodyFraming::Chunked => BackendFraming::Chunked,
    };
    let request = http_backend::request_head(head, &conn.info, framing);
    if let Err(e) = stream.write_all(&request) {
        // A pooled connection the backend closed meanwhile: one fresh try.
        if !reused {
            return Err(bad_gateway(conn, addr, e));
        }
        reused = false;
        stream = fresh(conn, index).map_err(|e| bad_gateway(conn, addr, e))?;
        stream
            .write_all(&request)
            .map_err(|e| bad_gateway(conn, addr, e))?;
    }
    let mut body_consumed = true;
    match head.body {
        BodyFraming::None => {}
        BodyFraming::Length(n) => {
            conn.send_continue(head)?;
            match conn.copy_body(n, &mut stream) {
                Ok(()) => {}
                Err(CopyError::Sink) => body_consumed = false,
                Err(e) => return Err(e.into_end()),
            }
        }
        BodyFraming::Chunked => {
            conn.send_continue(head)?;
            let limit = conn.shared.settings.max_body.unwrap_or(u64::MAX);
            let mut framed = Vec::with_capacity(READ_CHUNK + 16);
            let copied = conn.copy_chunked(limit, &mut |data| {
                framed.clear();
                framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                framed.extend_from_slice(data);
                framed.extend_from_slice(b"\r\n");
                stream.write_all(&framed)
            });
            match copied {
                Ok(_) => {
                    let _ = stream.write_all(b"0\r\n\r\n");
                }
                Err(CopyError::Sink) => body_consumed = false,
                Err(e) => return Err(e.into_end()),
            }
        }
    }
    Ok(Sent {
        stream,
        body_consumed,
        http_request: Some(request),
        reused,
    })
}

/// A fresh connection to backend `index` (after a pooled one turned out dead).
fn fresh(conn: &Conn<'_, '_>, index: usize) -> std::io::Result<BackendStream> {
    let t = conn.shared.settings.timeouts;
    let mut s = conn.shared.backends.reconnect(index, t.connect)?;
    s.set_timeouts(t.backend);
    Ok(s)
}

fn bad_gateway(conn: &Conn<'_, '_>, addr: &BackendAddr, e: std::io::Error) -> End {
    log::warn!("{}: backend {addr}: {e}", conn.info.peer);
    End::Answer(Status::BadGateway)
}

/// The backend's answer to an awaited request arrived (or its time is up): relay it.
pub fn complete(
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    wait: BackendWait,
) -> Result<Answered, End> {
    let BackendWait {
        mut backend,
        index,
        http_request,
        reused,
        keep_alive,
        deadline,
    } = wait;
    let shared = conn.shared;
    let addr = shared.backends.addr(index);
    let full = shared.settings.timeouts.backend;
    // The head must begin by the deadline, however long the wait in the epoll set was.
    backend.set_timeouts(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1)),
    );
    let read = read_response(conn, head, &mut backend, addr);
    backend.set_timeouts(full);
    let (resp, head_len, rbuf) = match (read, http_request) {
        // The pooled connection died before answering a request without body: retry once.
        (Err(End::Answer(Status::BadGateway)), Some(request))
            if reused && head.body == BodyFraming::None =>
        {
            backend = fresh(conn, index).map_err(|e| bad_gateway(conn, addr, e))?;
            backend
                .write_all(&request)
                .map_err(|e| bad_gateway(conn, addr, e))?;
            read_response(conn, head, &mut backend, addr)?
        }
        (other, _) => other?,
    };
    let (answered, reusable) = relay(conn, head, &resp, head_len, &mut backend, rbuf, keep_alive)?;
    if addr.is_http() && reusable && resp.keep_alive {
        shared.backends.pool.put(index, backend);
    }
    Ok(answered)
}

/// Read the backend's response head (skipping interim 1xx answers). Returns the head, its
/// length, and the buffer holding it and any body bytes read with it.
fn read_response(
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    backend: &mut BackendStream,
    addr: &BackendAddr,
) -> Result<(ResponseHead, usize, Vec<u8>), End> {
    let mut rbuf = std::mem::take(&mut conn.local.scratch);
    rbuf.clear();
    match read_head_into(&mut rbuf, head.is_head(), backend) {
        Ok((resp, len)) => Ok((resp, len, rbuf)),
        Err((status, why)) => {
            log::warn!("{}: backend {addr}: {why}", conn.info.peer);
            // The buffer goes back to the thread either way.
            conn.local.scratch = rbuf;
            Err(End::Answer(status))
        }
    }
}

/// Read until `rbuf` holds a final response head; Err: the status the client gets and why.
fn read_head_into(
    rbuf: &mut Vec<u8>,
    is_head: bool,
    backend: &mut BackendStream,
) -> Result<(ResponseHead, usize), (Status, String)> {
    loop {
        match response::parse(rbuf, is_head) {
            Ok(Some((resp, _))) if resp.code == 101 => {
                return Err((
                    Status::BadGateway,
                    "switched protocols, which is not supported".into(),
                ))
            }
            Ok(Some((resp, len))) if resp.code < 200 => {
                // 100 Continue, 103 Early Hints: we answer 100-continue ourselves.
                rbuf.drain(..len);
                continue;
            }
            Ok(Some(parsed)) => return Ok(parsed),
            Ok(None) if rbuf.len() >= MAX_BACKEND_HEAD => {
                let why = format!("sent a head over {MAX_BACKEND_HEAD} bytes");
                return Err((Status::BadGateway, why));
            }
            Ok(None) => {}
            Err(e) => return Err((Status::BadGateway, e.to_string())),
        }
        match read_into(backend, rbuf) {
            Ok(0) => {
                let why = "closed before a complete response head".into();
                return Err((Status::BadGateway, why));
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {
                return Err((Status::GatewayTimeout, "silent past http-timeout".into()))
            }
            Err(e) => return Err((Status::BadGateway, e.to_string())),
        }
    }
}

/// Write our head and stream the body. Returns the answer and whether the backend
/// connection ended cleanly at the end of the body (reusable for HTTP backends).
fn relay(
    conn: &mut Conn<'_, '_>,
    head: &RequestHead,
    resp: &ResponseHead,
    head_len: usize,
    backend: &mut BackendStream,
    mut rbuf: Vec<u8>,
    keep_alive: bool,
) -> Result<(Answered, bool), End> {
    let body = response::client_body(resp.body, head.minor_version);
    let keep_alive = keep_alive && body != ClientBody::UntilClose && !conn.shared.stop_requested();
    let mut out = Vec::with_capacity(512);
    response::write_client_head(&mut out, resp, body, keep_alive, head.minor_version);
    rbuf.drain(..head_len);
    let sent = stream_body(conn, resp, body, backend, &mut rbuf, out);
    conn.local.scratch = rbuf;
    let (bytes, clean) = sent.map_err(|e| {
        log::debug!("{}: response cut short: {e}", conn.info.peer);
        End::Client
    })?;
    Ok((
        Answered {
            keep_alive,
            status: resp.code,
            bytes,
        },
        clean,
    ))
}

/// Copy the body; `pending` is what the client gets first (our head), `rbuf` holds body
/// bytes already read from the backend. Returns the bytes sent and whether the backend's
/// body ended exactly where its framing said (nothing left over).
fn stream_body(
    conn: &mut Conn<'_, '_>,
    resp: &ResponseHead,
    body: ClientBody,
    backend: &mut BackendStream,
    rbuf: &mut Vec<u8>,
    mut pending: Vec<u8>,
) -> std::io::Result<(u64, bool)> {
    let mut client = Counting {
        inner: &mut conn.tls,
        count: 0,
    };
    match resp.body {
        BackendBody::None => Ok((client.send(&pending)?, rbuf.is_empty())),
        BackendBody::Length(mut left) => loop {
            let take = (left.min(rbuf.len() as u64)) as usize;
            pending.extend_from_slice(&rbuf[..take]);
            left -= take as u64;
            let extra = rbuf.len() > take;
            rbuf.clear();
            client.send(&pending)?;
            pending.clear();
            if left == 0 {
                return Ok((client.count, !extra));
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
                    return Ok((client.send(&pending)?, rbuf.is_empty()));
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
                return Ok((client.send(&pending)?, false));
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
    buf.reserve(READ_CHUNK * 4);
    let r = backend.read_uninit(&mut buf.spare_capacity_mut()[..READ_CHUNK * 4]);
    if let Ok(n) = r {
        // SAFETY: read_uninit initialized the first `n` bytes of the spare capacity.
        unsafe { buf.set_len(len + n) };
    }
    r
}

/// The client stream, counting what we send for the scoreboard and the access log.
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
