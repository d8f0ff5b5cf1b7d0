//! One client connection: owns its TLS stream and read buffer, and serves requests on it
//! until either side ends it. Everything here is blocking OpenSSL with socket timeouts.

use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use openssl::ssl::SslStream;

use crate::http::chunked::{Decoder, Step};
use crate::http::errors::Status;
use crate::http::request::{self, BodyFraming, RequestHead};
use crate::park::{Parked, Stage};
use crate::proxy::{self, Awaiting, BackendWait};
use crate::responder;
use crate::server::{ListenerRt, Shared};
use crate::session::ConnInfo;
use crate::socket::ClientSocket;

/// How much we read from a socket at once.
pub const READ_CHUNK: usize = 16 * 1024;

/// Why a request ends early.
#[derive(Debug)]
pub enum End {
    /// The client went away, timed out or broke the protocol: close without an answer.
    Client,
    /// Answer with this status, then close.
    Answer(Status),
}

/// What copying a request body toward a sink can fail on.
#[derive(Debug)]
pub enum CopyError {
    Client,
    Sink,
    /// Bad chunked framing from the client.
    Framing,
    TooLarge,
}

/// An answered request.
pub struct Answered {
    /// The connection may serve another request.
    pub keep_alive: bool,
    pub status: u16,
    pub bytes: u64,
}

/// Where a connection goes after a request.
enum Next {
    KeepAlive,
    Close,
    /// Park until the backend answers.
    Await(Box<Awaiting>),
}

/// What a request led to.
enum Reply {
    Answered(Answered),
    /// Sent to a backend: its answer is awaited.
    Sent(BackendWait),
}

/// What one serving thread owns and reuses across its connections.
#[derive(Default)]
pub struct ThreadState {
    pub index: usize,
    pub scratch: Vec<u8>,
    /// The read buffer of the connection this thread serves; it travels with a connection
    /// only while that holds unread bytes (pipelined requests). Allocating 16 KiB per
    /// resumed connection showed in profiles (malloc, malloc_consolidate).
    pub read_buf: Vec<u8>,
}

pub struct Conn<'a, 's> {
    pub tls: SslStream<ClientSocket>,
    pub shared: &'s Shared<'s>,
    pub listener: &'s ListenerRt,
    pub info: ConnInfo,
    /// Bytes from the client not yet consumed (the next head, pipelined requests).
    pub buf: Vec<u8>,
    pub local: &'a mut ThreadState,
    /// A request was read on this connection already (then keep-alive timing applies).
    served_any: bool,
    /// Its fd is in the worker's shared epoll set (parked before).
    registered: bool,
}

impl<'a, 's> Conn<'a, 's> {
    /// A connection past its handshake: `served_any` requests before, `registered` in the
    /// shared epoll set.
    pub fn new(
        (tls, info, served_any, registered): (SslStream<ClientSocket>, ConnInfo, bool, bool),
        shared: &'s Shared<'s>,
        listener: &'s ListenerRt,
        local: &'a mut ThreadState,
    ) -> Self {
        let mut buf = std::mem::take(&mut local.read_buf);
        buf.clear();
        Self {
            tls,
            shared,
            listener,
            info,
            buf,
            local,
            served_any,
            registered,
        }
    }

    /// Serve requests until the connection ends (None), waits for a request with nothing
    /// arrived, or waits for a backend's answer (Some: park it). `due`: the epoll set saw
    /// the next request arrive: read it now. `awaiting`: a request whose backend answered
    /// (or whose time is up) comes first.
    pub fn serve(
        mut self,
        mut due: bool,
        mut awaiting: Option<Box<Awaiting>>,
    ) -> Option<Box<Parked>> {
        self.tls
            .get_mut()
            .set_write_timeout(Some(self.shared.settings.timeouts.backend));
        loop {
            let outcome = if let Some(a) = awaiting.take() {
                self.complete(*a)
            } else {
                if !due && self.is_idle() {
                    self.give_back_buf();
                    return Some(Box::new(self.into_parked()));
                }
                due = false;
                let first = !self.served_any;
                self.served_any = true;
                match self.read_head(first) {
                    Ok(Some(len)) => self.handle_head(len),
                    Ok(None) => Err(End::Client),
                    Err(end) => {
                        if let End::Answer(status) = &end {
                            self.access_log_line(None, status.code(), 0, Instant::now());
                        }
                        Err(end)
                    }
                }
            };
            match outcome {
                Ok(Next::KeepAlive) => continue,
                Ok(Next::Await(a)) => {
                    let buf = if self.buf.is_empty() {
                        self.give_back_buf();
                        Vec::new()
                    } else {
                        std::mem::take(&mut self.buf)
                    };
                    return Some(Box::new(self.into_awaiting(a, buf)));
                }
                Ok(Next::Close) | Err(End::Client) => break,
                Err(End::Answer(status)) => {
                    let _ = self.tls.write_all(&status.response());
                    break;
                }
            }
        }
        // close_notify, best effort: the peer may be gone already.
        let _ = self.tls.shutdown();
        self.give_back_buf();
        None
    }

    /// The read buffer goes back to the thread (it holds nothing of this connection's).
    fn give_back_buf(&mut self) {
        self.local.read_buf = std::mem::take(&mut self.buf);
    }

    /// Nothing of a next request has arrived: no bytes we hold, none OpenSSL holds
    /// (decrypted or read ahead), and, before the first request, none in the socket.
    fn is_idle(&self) -> bool {
        self.buf.is_empty()
            && !crate::ssl_ext::has_pending(self.tls.ssl())
            && (self.served_any || !self.socket_readable())
    }

    /// Bytes wait in the socket already: a first request often comes right behind the
    /// handshake's last flight, and one poll(2) beats a trip through the shared epoll set.
    /// Later requests come a round trip after our answer: looking costs more than it finds
    /// (a poll per request, which found nothing under keep-alive load).
    fn socket_readable(&self) -> bool {
        let mut fds = [PollFd::new(self.tls.get_ref().as_fd(), PollFlags::POLLIN)];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
    }

    fn into_parked(self) -> Parked {
        let t = self.shared.settings.timeouts;
        // The first request gets the head timeout, later ones the keep-alive time.
        let idle = if self.served_any {
            t.keepalive
        } else {
            t.headers
        };
        Parked {
            deadline: Instant::now() + idle,
            listener: self.listener.index,
            registered: self.registered,
            started: None,
            stage: Stage::Idle {
                tls: self.tls,
                info: self.info,
                served_any: self.served_any,
            },
        }
    }

    /// Park while the backend works on a request: its fd, not the client's, is watched.
    fn into_awaiting(self, awaiting: Box<Awaiting>, buf: Vec<u8>) -> Parked {
        Parked {
            deadline: awaiting.wait.deadline,
            listener: self.listener.index,
            registered: awaiting.wait.backend.registered,
            started: Some(awaiting.started),
            stage: Stage::Backend {
                tls: self.tls,
                info: self.info,
                buf,
                client_registered: self.registered,
                awaiting,
            },
        }
    }

    /// Parse and answer (or send on) one request whose head is `self.buf[..len]`.
    fn handle_head(&mut self, len: usize) -> Result<Next, End> {
        let started = Instant::now();
        let head = match request::parse(&self.buf[..len]) {
            Ok(head) => head,
            Err(e) => {
                log::debug!("{}: {}", self.info.peer, e.reason);
                self.access_log_line(None, e.status.code(), 0, started);
                return Err(End::Answer(e.status));
            }
        };
        self.buf.drain(..len);
        let thread = self.local.index;
        self.shared.activity.request_started(thread);
        match self.answer(&head) {
            Ok(Reply::Sent(wait)) => {
                // No thread is busy on it while the backend works.
                self.shared.activity.request_parked(thread);
                Ok(Next::Await(Box::new(Awaiting {
                    head,
                    started,
                    wait,
                })))
            }
            Ok(Reply::Answered(a)) => self.finish(&head, started, Ok(a)),
            Err(end) => self.finish(&head, started, Err(end)),
        }
    }

    /// The backend of a parked request answered (or its time is up): relay the answer.
    fn complete(&mut self, awaiting: Awaiting) -> Result<Next, End> {
        let Awaiting {
            head,
            started,
            wait,
        } = awaiting;
        self.shared.activity.request_started(self.local.index);
        let result = proxy::complete(self, &head, wait);
        self.finish(&head, started, result)
    }

    /// Count and log an answered request.
    fn finish(
        &mut self,
        head: &RequestHead,
        started: Instant,
        result: Result<Answered, End>,
    ) -> Result<Next, End> {
        let (status, bytes) = match &result {
            Ok(a) => (a.status, a.bytes),
            Err(End::Answer(s)) => (s.code(), 0),
            // The client went away before its answer was complete (nginx's 499).
            Err(End::Client) => (499, 0),
        };
        self.shared.request_done(self.local.index, bytes);
        self.access_log_line(Some(head), status, bytes, started);
        result.map(|a| {
            if a.keep_alive {
                Next::KeepAlive
            } else {
                Next::Close
            }
        })
    }

    /// Answer one request, or send it to a backend.
    fn answer(&mut self, head: &RequestHead) -> Result<Reply, End> {
        let shared = self.shared;
        let settings = &shared.settings;
        if let (BodyFraming::Length(n), Some(max)) = (head.body, settings.max_body) {
            if n > max {
                return Err(End::Answer(Status::PayloadTooLarge));
            }
        }
        let keep_alive =
            head.keep_alive && !settings.timeouts.keepalive.is_zero() && !shared.stop_requested();
        if shared.backends.is_empty() {
            self.discard_body(head)?;
            let answer = responder::response(head, &self.info, keep_alive);
            self.tls.write_all(&answer).map_err(|_| End::Client)?;
            return Ok(Reply::Answered(Answered {
                keep_alive,
                status: 200,
                bytes: answer.len() as u64,
            }));
        }
        proxy::forward(self, head, keep_alive).map(Reply::Sent)
    }

    fn access_log_line(
        &self,
        head: Option<&RequestHead>,
        status: u16,
        bytes: u64,
        started: Instant,
    ) {
        if !self.shared.settings.access_log {
            return;
        }
        let (method, target, proto) = head.map_or(("-", "-", "-"), |h| {
            (h.method.as_str(), h.target.as_str(), h.protocol())
        });
        log::info!(
            target: "access",
            "{} \"{method} {target} {proto}\" {status} {bytes} {:.3}s {} {} \"{}\"",
            self.info.peer,
            started.elapsed().as_secs_f64(),
            self.info.tls_version,
            self.info.cipher,
            self.info.client_dn.as_deref().unwrap_or("-"),
        );
    }

    /// Wait for a complete request head. Ok(None): the client closed or stayed idle past its
    /// timeout between requests (a normal end). Once a head has begun it must be complete
    /// within `http-headers-timeout` in total, however slowly its bytes trickle in.
    fn read_head(&mut self, first: bool) -> Result<Option<usize>, End> {
        let t = self.shared.settings.timeouts;
        let max = self.shared.settings.buffer_size;
        let mut scanned = 0;
        let mut deadline = (first || !self.buf.is_empty()).then(|| Instant::now() + t.headers);
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
            let timeout = match deadline {
                Some(d) => d.saturating_duration_since(Instant::now()),
                // Idle between requests.
                None => t.keepalive,
            };
            if timeout.is_zero() {
                return Err(End::Answer(Status::RequestTimeout));
            }
            match self.read_more(timeout) {
                Ok(0) => return Ok(None),
                Ok(_) => {
                    deadline.get_or_insert_with(|| Instant::now() + t.headers);
                }
                Err(e) if is_timeout(&e) && self.buf.is_empty() => return Ok(None),
                Err(e) if is_timeout(&e) => return Err(End::Answer(Status::RequestTimeout)),
                Err(_) => return Ok(None),
            }
        }
    }

    /// Append what the client sends next to `buf`. Ok(0) at end of stream.
    pub fn read_more(&mut self, timeout: Duration) -> io::Result<usize> {
        self.set_read_timeout(timeout);
        let len = self.buf.len();
        // Read into spare capacity: zero-filling 16 KiB before every read showed in profiles.
        self.buf.reserve(READ_CHUNK);
        let r = self
            .tls
            .read_uninit(&mut self.buf.spare_capacity_mut()[..READ_CHUNK]);
        if let Ok(n) = r {
            // SAFETY: read_uninit initialized the first `n` bytes of the spare capacity.
            unsafe { self.buf.set_len(len + n) };
        }
        r.or_else(|e| match e.kind() {
            // A peer that closes without close_notify: treat as end of stream.
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset => Ok(0),
            _ => Err(e),
        })
    }

    fn set_read_timeout(&mut self, t: Duration) {
        self.tls
            .get_mut()
            .set_read_timeout(Some(t.max(Duration::from_millis(1))));
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
        self.set_read_timeout(timeout);
        let scratch = &mut self.local.scratch;
        scratch.resize(READ_CHUNK * 4, 0);
        while left > 0 {
            let want = (left.min(scratch.len() as u64)) as usize;
            let n = match self.tls.read(&mut scratch[..want]) {
                Ok(0) | Err(_) => return Err(CopyError::Client),
                Ok(n) => n,
            };
            sink.write_all(&scratch[..n]).map_err(|_| CopyError::Sink)?;
            left -= n as u64;
        }
        Ok(())
    }

    /// Decode a chunked body, handing each piece of data to `sink` as it arrives; at most
    /// `limit` bytes of data. Memory stays bounded by one read.
    pub fn copy_chunked(
        &mut self,
        limit: u64,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Result<u64, CopyError> {
        let timeout = self.shared.settings.timeouts.backend;
        let mut decoder = Decoder::new();
        let mut total = 0u64;
        loop {
            let mut pos = 0;
            while !decoder.is_done() {
                let (n, step) = decoder
                    .step(&self.buf[pos..])
                    .map_err(|_| CopyError::Framing)?;
                pos += n;
                match step {
                    Step::Data(data) => {
                        total += data.len() as u64;
                        if total > limit {
                            return Err(CopyError::TooLarge);
                        }
                        sink(data).map_err(|_| CopyError::Sink)?;
                    }
                    Step::Done => break,
                    Step::Framing if n == 0 => break,
                    Step::Framing => {}
                }
            }
            self.buf.drain(..pos);
            if decoder.is_done() {
                return Ok(total);
            }
            match self.read_more(timeout) {
                Ok(0) | Err(_) => return Err(CopyError::Client),
                Ok(_) => {}
            }
        }
    }

    /// Read a whole chunked body (uwsgi backends need its length up front), up to `limit`.
    pub fn read_chunked(&mut self, limit: u64) -> Result<Vec<u8>, End> {
        let mut body = Vec::new();
        self.copy_chunked(limit, &mut |data| {
            body.extend_from_slice(data);
            Ok(())
        })
        .map_err(CopyError::into_end)?;
        Ok(body)
    }

    /// Read and drop a request body (the built-in responder ignores it).
    fn discard_body(&mut self, head: &RequestHead) -> Result<(), End> {
        match head.body {
            BodyFraming::None => Ok(()),
            BodyFraming::Length(n) => {
                self.send_continue(head)?;
                self.copy_body(n, &mut io::sink())
                    .map_err(CopyError::into_end)
            }
            BodyFraming::Chunked => {
                self.send_continue(head)?;
                let limit = self.shared.settings.max_body.unwrap_or(u64::MAX);
                self.copy_chunked(limit, &mut |_| Ok(()))
                    .map(drop)
                    .map_err(CopyError::into_end)
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

impl CopyError {
    /// The answer a client gets when its body could not be read (the sink is fine).
    pub fn into_end(self) -> End {
        match self {
            CopyError::Client | CopyError::Sink => End::Client,
            CopyError::Framing => End::Answer(Status::BadRequest),
            CopyError::TooLarge => End::Answer(Status::PayloadTooLarge),
        }
    }
}

pub fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}
