//! One client connection: owns its TLS stream and read buffer, and serves requests on it
//! until either side ends it. Everything here is blocking OpenSSL with socket timeouts.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use openssl::ssl::SslStream;

use crate::http::chunked::{Decoder, Step};
use crate::http::errors::Status;
use crate::http::request::{self, BodyFraming, RequestHead};
use crate::server::{ListenerRt, Shared};
use crate::session::ConnInfo;
use crate::{proxy, responder};

/// How much we read from a socket at once.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why a connection ends early.
#[derive(Debug)]
pub enum End {
    /// The client went away, timed out or broke the protocol: close without an answer.
    Client,
    /// Answer with this status, then close.
    Answer(Status),
}

/// What reading a request body toward a sink can fail on.
pub enum CopyError {
    Client,
    Sink,
}

pub struct Conn<'a> {
    pub tls: SslStream<TcpStream>,
    pub shared: &'a Shared<'a>,
    pub listener: &'a ListenerRt,
    pub info: ConnInfo,
    /// Bytes from the client not yet consumed (the next head, pipelined requests).
    pub buf: Vec<u8>,
    /// A buffer owned by the serving thread, reused across connections.
    pub scratch: &'a mut Vec<u8>,
    read_timeout: Option<Duration>,
    /// Index of the serving thread (its scoreboard entry).
    thread: usize,
}

impl<'a> Conn<'a> {
    pub fn new(
        tls: SslStream<TcpStream>,
        shared: &'a Shared<'a>,
        listener: &'a ListenerRt,
        info: ConnInfo,
        scratch: &'a mut Vec<u8>,
        thread: usize,
    ) -> Self {
        Self {
            tls,
            shared,
            listener,
            info,
            buf: Vec::with_capacity(READ_CHUNK),
            scratch,
            read_timeout: None,
            thread,
        }
    }

    /// Serve requests until the connection ends.
    pub fn serve(&mut self) {
        let _ = self
            .tls
            .get_ref()
            .set_write_timeout(Some(self.shared.settings.timeouts.backend));
        let mut first = true;
        loop {
            let outcome = match self.read_head(first) {
                Ok(Some(len)) => self.handle_head(len),
                Ok(None) => Err(End::Client),
                Err(end) => Err(end),
            };
            first = false;
            match outcome {
                Ok(true) => continue,
                Ok(false) | Err(End::Client) => break,
                Err(End::Answer(status)) => {
                    let _ = self.tls.write_all(&status.response());
                    break;
                }
            }
        }
        // close_notify, best effort: the peer may be gone already.
        let _ = self.tls.shutdown();
    }

    /// Parse and answer one request whose head is `self.buf[..len]`. Ok(true): keep going.
    fn handle_head(&mut self, len: usize) -> Result<bool, End> {
        let head = request::parse(&self.buf[..len]).map_err(|e| {
            log::debug!("{}: {}", self.info.peer, e.reason);
            End::Answer(e.status)
        })?;
        self.buf.drain(..len);
        self.shared.activity.request_started(self.thread);
        let result = self.answer(&head);
        let sent = match &result {
            Ok((_, bytes)) => *bytes,
            Err(_) => 0,
        };
        self.shared.request_done(self.thread, sent);
        result.map(|(keep, _)| keep)
    }

    /// Answer one request: Ok((keep going, bytes sent)).
    fn answer(&mut self, head: &RequestHead) -> Result<(bool, u64), End> {
        let settings = &self.shared.settings;
        if let (BodyFraming::Length(n), Some(max)) = (head.body, settings.max_body) {
            if n > max {
                return Err(End::Answer(Status::PayloadTooLarge));
            }
        }
        let keep_alive = head.keep_alive
            && !settings.timeouts.keepalive.is_zero()
            && !self.shared.stop_requested();
        if self.shared.backends.is_empty() {
            self.discard_body(head)?;
            let answer = responder::response(head, &self.info, keep_alive);
            self.tls.write_all(&answer).map_err(|_| End::Client)?;
            return Ok((keep_alive, answer.len() as u64));
        }
        proxy::forward(self, head, keep_alive)
    }

    /// Wait for a complete request head. Ok(None): the client closed or stayed idle past its
    /// timeout between requests (a normal end).
    fn read_head(&mut self, first: bool) -> Result<Option<usize>, End> {
        let t = self.shared.settings.timeouts;
        let max = self.shared.settings.buffer_size;
        let mut scanned = 0;
        loop {
            match request::find_head_end(&self.buf, &mut scanned) {
                Ok(Some(end)) if end <= max => return Ok(Some(end)),
                Ok(Some(_)) => return Err(End::Answer(Status::HeaderFieldsTooLarge)),
                Ok(None) if self.buf.len() >= max => {
                    return Err(End::Answer(Status::HeaderFieldsTooLarge))
                }
                Ok(None) => {}
                Err(e) => return Err(End::Answer(e.status)),
            }
            // Idle between requests: the keep-alive timeout; once a head has begun, or for
            // the first request, the head timeout.
            let timeout = if self.buf.is_empty() && !first {
                t.keepalive
            } else {
                t.headers
            };
            match self.read_more(timeout) {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if is_timeout(&e) && self.buf.is_empty() => return Ok(None),
                Err(e) if is_timeout(&e) => return Err(End::Answer(Status::RequestTimeout)),
                Err(_) => return Ok(None),
            }
        }
    }

    /// Append what the client sends next to `buf`. Ok(0) at end of stream.
    pub fn read_more(&mut self, timeout: Duration) -> io::Result<usize> {
        self.set_read_timeout(timeout)?;
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let r = self.tls.read(&mut self.buf[len..]);
        self.buf.truncate(len + *r.as_ref().unwrap_or(&0));
        r.or_else(|e| match e.kind() {
            // A peer that closes without close_notify: treat as end of stream.
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => Ok(0),
            _ => Err(e),
        })
    }

    fn set_read_timeout(&mut self, t: Duration) -> io::Result<()> {
        let t = Some(t.max(Duration::from_millis(1)));
        if self.read_timeout != t {
            self.tls.get_ref().set_read_timeout(t)?;
            self.read_timeout = t;
        }
        Ok(())
    }

    /// Copy a `Content-Length` body of `len` bytes to `sink`.
    pub fn copy_body(&mut self, len: u64, sink: &mut impl Write) -> Result<(), CopyError> {
        let timeout = self.shared.settings.timeouts.backend;
        let mut left = len;
        let from_buf = (left.min(self.buf.len() as u64)) as usize;
        if from_buf > 0 {
            sink.write_all(&self.buf[..from_buf])
                .map_err(|_| CopyError::Sink)?;
            self.buf.drain(..from_buf);
            left -= from_buf as u64;
        }
        self.set_read_timeout(timeout)
            .map_err(|_| CopyError::Client)?;
        self.scratch.resize(READ_CHUNK * 4, 0);
        while left > 0 {
            let want = (left.min(self.scratch.len() as u64)) as usize;
            let n = match self.tls.read(&mut self.scratch[..want]) {
                Ok(0) | Err(_) => return Err(CopyError::Client),
                Ok(n) => n,
            };
            sink.write_all(&self.scratch[..n])
                .map_err(|_| CopyError::Sink)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Read a whole chunked body (uwsgi backends need its length up front), up to `limit`.
    pub fn read_chunked(&mut self, limit: u64) -> Result<Vec<u8>, End> {
        let timeout = self.shared.settings.timeouts.backend;
        let mut decoder = Decoder::new();
        let mut body = Vec::new();
        loop {
            let mut pos = 0;
            let mut need_more = false;
            while !decoder.is_done() {
                let (n, step) = decoder
                    .step(&self.buf[pos..])
                    .map_err(|_| End::Answer(Status::BadRequest))?;
                pos += n;
                match step {
                    Step::Data(data) => {
                        if body.len() as u64 + data.len() as u64 > limit {
                            return Err(End::Answer(Status::PayloadTooLarge));
                        }
                        body.extend_from_slice(data);
                    }
                    Step::Done => break,
                    Step::Framing if n == 0 => {
                        need_more = true;
                        break;
                    }
                    Step::Framing => {}
                }
            }
            self.buf.drain(..pos);
            if decoder.is_done() {
                return Ok(body);
            }
            debug_assert!(need_more);
            match self.read_more(timeout) {
                Ok(0) | Err(_) => return Err(End::Client),
                Ok(_) => {}
            }
        }
    }

    /// Read and drop a request body (the built-in responder ignores it).
    fn discard_body(&mut self, head: &RequestHead) -> Result<(), End> {
        match head.body {
            BodyFraming::None => Ok(()),
            BodyFraming::Length(n) => {
                self.send_continue(head)?;
                self.copy_body(n, &mut io::sink()).map_err(|_| End::Client)
            }
            BodyFraming::Chunked => {
                self.send_continue(head)?;
                let limit = self.shared.settings.max_body.unwrap_or(u64::MAX);
                self.read_chunked(limit).map(drop)
            }
        }
    }

    /// `Expect: 100-continue`: tell the client to send its body.
    pub fn send_continue(&mut self, head: &RequestHead) -> Result<(), End> {
        if head.expect_continue && head.minor_version >= 1 {
            self.tls
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|_| End::Client)?;
        }
        Ok(())
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
