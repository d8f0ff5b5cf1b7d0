//! HTTP/1.1 toward the client and the backends (issue 4; SPEC §5, §6, §8), with scripted
//! backends in test threads (tests/common/http_peers.rs): close-delimited and chunked
//! response framing, HEAD/204/304, pipelining, `Expect: 100-continue`, 502/504, round
//! robin with failover, and the access log.

mod common;

use std::time::{Duration, Instant};

use common::certs::CLIENT_DN;
use common::client::Response;
use common::http_peers::{peer_bytes, NextEvent, Peer, PeerAddr, PeerRequest, Proto, RawTls};
use common::{config, free_port, toml_str, wait_until, watchdog, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

/// Start a master (1 worker, 8 threads) forwarding to `http_to`, plus `extra` keys.
fn start(env: &TestEnv, http_to: &str, extra: &str) -> (Server, u16) {
    let port = free_port();
    let server = Server::start(env.dir(), &config(port, Some(http_to), extra), port);
    (server, port)
}

fn connect(port: u16, env: &TestEnv) -> RawTls {
    RawTls::connect(port, &env.certs).unwrap_or_else(|e| panic!("TLS connect to {port}: {e}"))
}

fn is_close(r: &Response) -> bool {
    r.header("connection")
        .map(|c| c.eq_ignore_ascii_case("close"))
        .unwrap_or(false)
}

/// GET on the kept-alive connection; asserts a 200 echo from the peer for `path`.
fn get_echo(c: &mut RawTls, path: &str, what: &str) -> Response {
    let r = c
        .get(path)
        .unwrap_or_else(|e| panic!("{what}: GET {path} on the same connection: {e}"));
    assert_eq!(r.status, 200, "{what}: GET {path}: {r:?}");
    assert!(
        r.text().contains(&format!("REQUEST-LINE=GET {path}\n")),
        "{what}: GET {path} got another request's answer: {r:?}"
    );
    r
}

fn peer_request(peer: &Peer, path: &str) -> PeerRequest {
    peer.request_for(path).unwrap_or_else(|| {
        panic!(
            "the backend saw no request for {path}; it saw {:#?}; errors {:?}",
            peer.requests(),
            peer.errors()
        )
    })
}

// ------------------------------------------------------------ acceptance 4: close-delimited

/// A backend answer with neither Content-Length nor chunking (delimited by the backend
/// closing) reaches an HTTP/1.1 client whole and chunked, and the same connection then
/// serves the next request.
fn close_delimited_keeps_connection(peer: &Peer, paths: &[&str]) {
    let env = TestEnv::new();
    let (_server, port) = start(&env, &peer.http_to(), "");
    let mut c = connect(port, &env);
    for (i, path) in paths.iter().enumerate() {
        let n = 300_000 + i * 7;
        let target = format!("{path}?n={n}");
        let r = c
            .get(&target)
            .unwrap_or_else(|e| panic!("GET {target} ({:?} backend): {e}", peer.proto));
        assert_eq!(r.status, 200, "GET {target}: {r:?}");
        assert_eq!(
            r.header("transfer-encoding")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("chunked"),
            "a close-delimited backend body must reach an HTTP/1.1 client chunked: {r:?}"
        );
        assert!(r.header("content-length").is_none(), "{r:?}");
        assert!(
            !is_close(&r),
            "the client connection should stay open after a re-chunked body: {r:?}"
        );
        assert_eq!(r.body.len(), n, "GET {target}: body length");
        assert!(
            r.body == peer_bytes(n),
            "GET {target}: body content differs"
        );
        get_echo(
            &mut c,
            &format!("/after-close-{i}"),
            "request after a close-delimited body",
        );
    }
}

#[test]
fn close_delimited_uwsgi_body_is_rechunked_and_connection_reused() {
    let _wd = watchdog(
        "close_delimited_uwsgi_body_is_rechunked_and_connection_reused",
        LIMIT,
    );
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    close_delimited_keeps_connection(&peer, &["/close", "/close10"]);
}

#[test]
fn close_delimited_http_body_is_rechunked_and_connection_reused() {
    let _wd = watchdog(
        "close_delimited_http_body_is_rechunked_and_connection_reused",
        LIMIT,
    );
    let peer = Peer::http_tcp();
    close_delimited_keeps_connection(&peer, &["/close", "/close10"]);
    assert!(peer.errors().is_empty(), "peer errors: {:?}", peer.errors());
}

/// An HTTP/1.0 client cannot take chunks: a close-delimited backend body reaches it
/// close-delimited, whole, and the connection then closes.
#[test]
fn close_delimited_body_to_http10_client() {
    let _wd = watchdog("close_delimited_body_to_http10_client", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (_server, port) = start(&env, &peer.http_to(), "");
    let mut c = connect(port, &env);
    let n = 100_000;
    c.send(format!("GET /close?n={n} HTTP/1.0\r\nHost: localhost:{port}\r\n\r\n").as_bytes())
        .expect("send");
    let r = c.response().expect("an answer to an HTTP/1.0 request");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("transfer-encoding").is_none(),
        "no chunks for HTTP/1.0: {r:?}"
    );
    assert_eq!(r.body.len(), n, "HTTP/1.0 body length (read until close)");
    assert!(r.body == peer_bytes(n));
}

/// Content-Length and chunked answers from an HTTP backend pass through on one
/// connection (the chunked one decoded and re-chunked), with keep-alive toward both sides.
#[test]
fn http_backend_framings_pass_through() {
    let _wd = watchdog("http_backend_framings_pass_through", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::http_tcp();
    let (_server, port) = start(&env, &peer.http_to(), "");
    let mut c = connect(port, &env);
    for (path, n) in [("/big", 1_000_000usize), ("/chunked", 777_777), ("/big", 5)] {
        let r = c.get(&format!("{path}?n={n}")).expect("GET");
        assert_eq!(r.status, 200, "{r:?}");
        if path == "/big" {
            assert_eq!(
                r.header("content-length"),
                Some(n.to_string().as_str()),
                "{r:?}"
            );
        } else {
            assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{r:?}");
        }
        assert!(r.body == peer_bytes(n), "{path}?n={n}: body differs");
    }
    for i in 0..17 {
        get_echo(&mut c, &format!("/more-{i}"), "after three framings");
    }
    assert!(
        peer.connections() < 20,
        "HTTP backend connections should be reused: {} connections for 20 requests",
        peer.connections()
    );
}

// ------------------------------------------------------------ HEAD, 204, 304

/// HEAD, 204 and 304 answers carry no body, even when the backend sends one (a WSGI app
/// server does for HEAD), and the connection goes on.
fn no_body_answers(peer: &Peer) {
    let env = TestEnv::new();
    let (_server, port) = start(&env, &peer.http_to(), "");
    let mut c = connect(port, &env);
    let what = format!("{:?} backend", peer.proto);

    for target in ["/head-echo", "/big?n=5000", "/chunked?n=5000"] {
        c.send(format!("HEAD {target} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes())
            .expect("send HEAD");
        let r = c.head_response().expect("an answer to HEAD");
        assert_eq!(r.status, 200, "{what}: HEAD {target}: {r:?}");
        assert_eq!(
            c.next_event(Duration::from_millis(500)),
            NextEvent::Open,
            "{what}: HEAD {target}: bytes followed the head of a HEAD answer (a body?) or \
             the connection closed: {r:?}"
        );
        if target.starts_with("/big") {
            assert_eq!(r.header("content-length"), Some("5000"), "{what}: {r:?}");
        }
        get_echo(
            &mut c,
            &format!("/after-head{}", target.replace(['/', '?', '='], "-")),
            &what,
        );
    }
    for code in [204u16, 304] {
        let r = c.get(&format!("/status?code={code}")).expect("GET /status");
        assert_eq!(r.status, code, "{what}: {r:?}");
        assert!(r.body.is_empty(), "{what}: {r:?}");
        assert!(
            r.header("transfer-encoding").is_none(),
            "{what}: a {code} must not be chunked: {r:?}"
        );
        assert_eq!(
            c.next_event(Duration::from_millis(500)),
            NextEvent::Open,
            "{what}: bytes after a {code} head, or the connection closed"
        );
        get_echo(&mut c, &format!("/after-{code}"), &what);
    }
}

#[test]
fn head_204_304_have_no_body_uwsgi() {
    let _wd = watchdog("head_204_304_have_no_body_uwsgi", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    no_body_answers(&peer);
}

#[test]
fn head_204_304_have_no_body_http() {
    let _wd = watchdog("head_204_304_have_no_body_http", LIMIT);
    let peer = Peer::http_tcp();
    no_body_answers(&peer);
    assert!(peer.errors().is_empty(), "peer errors: {:?}", peer.errors());
}

// ------------------------------------------------------------ pipelining

/// Requests sent in one write (GET, POST with a body, HEAD, GET) are answered in order.
fn pipelined(peer: &Peer) {
    let env = TestEnv::new();
    let (_server, port) = start(&env, &peer.http_to(), "");
    let mut c = connect(port, &env);
    let h = format!("Host: localhost:{port}\r\n");
    let batch = format!(
        "GET /p1 HTTP/1.1\r\n{h}\r\n\
         POST /p2 HTTP/1.1\r\n{h}Content-Length: 5\r\n\r\nhello\
         HEAD /p3 HTTP/1.1\r\n{h}\r\n\
         POST /p4 HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n\
         GET /p5 HTTP/1.1\r\n{h}\r\n"
    );
    c.send(batch.as_bytes()).expect("send the pipelined batch");
    let what = format!("{:?} backend", peer.proto);
    for (i, (method, path)) in [
        ("GET", "/p1"),
        ("POST", "/p2"),
        ("HEAD", "/p3"),
        ("POST", "/p4"),
        ("GET", "/p5"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = if method == "HEAD" {
            c.head_response()
        } else {
            c.response()
        }
        .unwrap_or_else(|e| panic!("{what}: pipelined answer {} ({method} {path}): {e}", i + 1));
        assert_eq!(
            r.status,
            200,
            "{what}: answer {} ({method} {path}): {r:?}",
            i + 1
        );
        if method != "HEAD" {
            assert!(
                r.text()
                    .contains(&format!("REQUEST-LINE={method} {path}\n")),
                "{what}: answer {} should be for {method} {path}: {r:?}",
                i + 1
            );
        }
        if path == "/p2" {
            assert!(r.text().contains("BODY-LEN=5\n"), "{r:?}");
        }
        if path == "/p4" {
            assert!(r.text().contains("BODY-LEN=3\n"), "{r:?}");
        }
    }
}

#[test]
fn pipelined_requests_answered_in_order_uwsgi() {
    let _wd = watchdog("pipelined_requests_answered_in_order_uwsgi", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    pipelined(&peer);
}

#[test]
fn pipelined_requests_answered_in_order_http() {
    let _wd = watchdog("pipelined_requests_answered_in_order_http", LIMIT);
    let peer = Peer::http_tcp();
    pipelined(&peer);
}

// ------------------------------------------------------------ Expect: 100-continue

/// `Expect: 100-continue`: the 100 arrives before the client sends its body (Content-Length
/// and chunked), then the final answer.
fn expect_continue(peer: &Peer) {
    let env = TestEnv::new();
    let (_server, port) = start(&env, &peer.http_to(), "");
    let what = format!("{:?} backend", peer.proto);
    let mut c = connect(port, &env);
    c.set_timeout(Duration::from_secs(15));
    for chunked in [false, true] {
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            "Content-Length: 11".to_string()
        };
        let path = if chunked {
            "/expect-chunked"
        } else {
            "/expect-length"
        };
        c.send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nExpect: 100-continue\r\n{framing}\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("send head");
        let interim = c.raw_head().unwrap_or_else(|e| {
            panic!("{what}: no 100 Continue before the body was sent ({path}): {e}")
        });
        assert!(
            interim.starts_with("HTTP/1.1 100 "),
            "{what}: {path}: expected `HTTP/1.1 100 Continue` before sending the body, got {interim:?}"
        );
        let body: &[u8] = if chunked {
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        } else {
            b"hello world"
        };
        c.send(body).expect("send body");
        let r = c.response().expect("final answer");
        assert_eq!(r.status, 200, "{what}: {path}: {r:?}");
        let sha = common::sha256_hex(b"hello world");
        assert!(
            r.text().contains(&format!("BODY-SHA256={sha}\n")),
            "{what}: {path}: the backend should get the body: {r:?}"
        );
    }
}

#[test]
fn expect_100_continue_uwsgi() {
    let _wd = watchdog("expect_100_continue_uwsgi", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    expect_continue(&peer);
}

#[test]
fn expect_100_continue_http() {
    let _wd = watchdog("expect_100_continue_http", LIMIT);
    let peer = Peer::http_tcp();
    expect_continue(&peer);
    let r = peer_request(&peer, "/expect-length");
    assert!(
        r.get("expect").is_none(),
        "Expect is hop-by-hop and answered by the proxy; the backend got {:?}",
        r.raw_head
    );
}

// ------------------------------------------------------------ acceptance 7: 502 / 504

/// One raw request on a new connection; returns the answer and how long it took.
fn one_request(port: u16, env: &TestEnv, path: &str) -> (Response, Duration) {
    let t0 = Instant::now();
    let mut c = connect(port, env);
    c.set_timeout(Duration::from_secs(60));
    let r = c
        .get(path)
        .unwrap_or_else(|e| panic!("GET {path}: no answer: {e}"));
    (r, t0.elapsed())
}

/// 504 for a backend silent past http-timeout = 2, 502 for garbage; the worker goes on.
fn bad_backend(peer: &Peer) {
    let env = TestEnv::new();
    let (server, port) = start(&env, &peer.http_to(), "http-timeout = 2\n");
    let what = format!("{:?} backend", peer.proto);
    let workers = server.wait_workers(1, Duration::from_secs(30));

    let (r, took) = one_request(port, &env, "/silent");
    assert_eq!(
        r.status, 504,
        "{what}: a backend silent past http-timeout = 2: {r:?}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(20),
        "{what}: the 504 should come after about http-timeout (2 s), came after {took:?}"
    );

    let (r, _) = one_request(port, &env, "/garbage");
    assert_eq!(r.status, 502, "{what}: garbage from the backend: {r:?}");

    let (r, _) = one_request(port, &env, "/fine");
    assert_eq!(
        r.status, 200,
        "{what}: a normal request after the errors: {r:?}"
    );
    assert_eq!(
        server.workers(),
        workers,
        "{what}: the worker should survive bad backends"
    );
}

#[test]
fn silent_504_and_garbage_502_uwsgi() {
    let _wd = watchdog("silent_504_and_garbage_502_uwsgi", LIMIT);
    let peer = Peer::uwsgi_tcp();
    bad_backend(&peer);
}

#[test]
fn silent_504_and_garbage_502_http() {
    let _wd = watchdog("silent_504_and_garbage_502_http", LIMIT);
    let peer = Peer::http_tcp();
    bad_backend(&peer);
}

/// A backend that refuses the connection: 502, for every kind of `http-to`, and the
/// worker goes on.
#[test]
fn refused_backend_502_every_kind() {
    let _wd = watchdog("refused_backend_502_every_kind", LIMIT);
    let env = TestEnv::new();
    // A TCP port nobody listens on, and a unix socket file whose listener is gone.
    let closed_port = free_port();
    let stale = env.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind stale.sock"));
    let cases = [
        format!("127.0.0.1:{closed_port}"),
        format!("http://127.0.0.1:{closed_port}"),
        stale.display().to_string(),
        format!("http+unix:{}", stale.display()),
    ];
    for to in &cases {
        let (server, port) = start(&env, to, "");
        let workers = server.wait_workers(1, Duration::from_secs(30));
        for attempt in 1..=2 {
            let (r, _) = one_request(port, &env, "/refused");
            assert_eq!(r.status, 502, "http-to = {to:?}, attempt {attempt}: {r:?}");
            assert!(
                is_close(&r) || r.header("content-length").is_some(),
                "{r:?}"
            );
        }
        assert_eq!(
            server.workers(),
            workers,
            "http-to = {to:?}: worker replaced"
        );
        drop(server);
    }
}

/// A TCP listener (backlog 0) whose accept queue is full, so a further connect hangs
/// (its SYNs are dropped); returns its address and the descriptors to keep open.
fn blackhole() -> (
    std::net::SocketAddr,
    Vec<std::net::TcpStream>,
    std::os::fd::OwnedFd,
) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; the sockaddr outlives the calls.
    let (fd, addr) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), len),
            0,
            "bind"
        );
        assert_eq!(libc::listen(fd, 0), 0, "listen");
        let mut out: libc::sockaddr_in = std::mem::zeroed();
        let mut olen = len;
        assert_eq!(
            libc::getsockname(fd, (&mut out as *mut libc::sockaddr_in).cast(), &mut olen),
            0
        );
        let port = u16::from_be(out.sin_port);
        (
            std::os::fd::OwnedFd::from_raw_fd(fd),
            std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port)),
        )
    };
    let mut fill = Vec::new();
    for _ in 0..8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(s) => fill.push(s),
            Err(_) => return (addr, fill, fd),
        }
    }
    panic!("could not fill the accept queue of {addr}");
}

/// A backend whose connect never completes: 502 after http-connect-timeout (2 s), for
/// uwsgi over TCP and for HTTP.
#[test]
fn backend_connect_timeout_gives_502() {
    let _wd = watchdog("backend_connect_timeout_gives_502", LIMIT);
    let env = TestEnv::new();
    let (addr, _fill, _fd) = blackhole();
    for to in [addr.to_string(), format!("http://{addr}")] {
        let (server, port) = start(&env, &to, "http-connect-timeout = 2\nhttp-timeout = 30\n");
        let (r, took) = one_request(port, &env, "/blackhole");
        assert_eq!(r.status, 502, "http-to = {to:?} whose connect hangs: {r:?}");
        assert!(
            took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
            "http-to = {to:?}: the 502 should come after http-connect-timeout = 2, came after {took:?}"
        );
        drop(server);
    }
}

// ------------------------------------------------------------ acceptance 8: failover

/// `n` requests as 10 connections of n/10 kept-alive requests each; every one must be 200.
fn requests_all_ok(port: u16, env: &TestEnv, n: usize, tag: &str) {
    let per = n / 10;
    for conn in 0..10 {
        let mut c = connect(port, env);
        for i in 0..per {
            let path = format!("/{tag}-{conn}-{i}");
            let r = c
                .get(&path)
                .unwrap_or_else(|e| panic!("{tag}: request {} failed: {e}", conn * per + i + 1));
            assert_eq!(
                r.status,
                200,
                "{tag}: request {}: {r:?}",
                conn * per + i + 1
            );
            assert!(
                r.text().contains(&format!("REQUEST-LINE=GET {path}\n")),
                "{r:?}"
            );
        }
    }
}

fn count_tag(peer: &Peer, tag: &str) -> usize {
    peer.requests()
        .iter()
        .filter(|r| r.path.starts_with(&format!("/{tag}-")))
        .count()
}

/// Two backends, both serving, then one stopped: 100 requests all succeed; restarted on
/// its address, it gets requests again.
fn failover(a: Peer, b: Peer, restart: impl Fn(&PeerAddr) -> Peer) {
    let env = TestEnv::new();
    let to = format!(
        "http-to = [{}, {}]\n",
        toml_str(&a.http_to()),
        toml_str(&b.http_to())
    );
    let port = free_port();
    let _server = Server::start(env.dir(), &config(port, None, &to), port);
    let mut a = a;

    requests_all_ok(port, &env, 20, "both");
    assert!(
        count_tag(&a, "both") > 0 && count_tag(&b, "both") > 0,
        "round robin should use both backends: a got {}, b got {}",
        count_tag(&a, "both"),
        count_tag(&b, "both")
    );

    a.stop();
    requests_all_ok(port, &env, 100, "one-down");
    assert_eq!(
        count_tag(&b, "one-down"),
        100,
        "the live backend answers everything"
    );

    let addr = a.addr.clone();
    drop(a);
    let a2 = restart(&addr);
    let back = wait_until(Duration::from_secs(30), || {
        requests_all_ok(port, &env, 10, "again");
        count_tag(&a2, "again") > 0
    });
    assert!(
        back,
        "a backend that is back should get requests again (retried later)"
    );
}

fn tcp_of(a: &PeerAddr) -> std::net::SocketAddr {
    match a {
        PeerAddr::Tcp(a) => *a,
        PeerAddr::Unix(p) => panic!("{} is no TCP address", p.display()),
    }
}

#[test]
fn failover_uwsgi_backends_one_stopped() {
    let _wd = watchdog("failover_uwsgi_backends_one_stopped", LIMIT);
    let env = TestEnv::new();
    let sock = env.path("a.sock");
    let a = Peer::uwsgi_unix(&sock);
    let b = Peer::uwsgi_tcp();
    failover(a, b, |_| Peer::uwsgi_unix(&sock));
}

#[test]
fn failover_uwsgi_tcp_backends_one_stopped() {
    let _wd = watchdog("failover_uwsgi_tcp_backends_one_stopped", LIMIT);
    let a = Peer::uwsgi_tcp();
    let b = Peer::uwsgi_tcp();
    failover(a, b, |old| Peer::tcp(Proto::Uwsgi, tcp_of(old)));
}

#[test]
fn failover_http_backends_one_stopped() {
    let _wd = watchdog("failover_http_backends_one_stopped", LIMIT);
    let a = Peer::http_tcp();
    let b = Peer::http_tcp();
    failover(a, b, |old| Peer::tcp(Proto::Http, tcp_of(old)));
}

// ------------------------------------------------------------ access log

fn access_line<'a>(log: &'a str, needle: &str) -> Option<&'a str> {
    log.lines().find(|l| l.contains(needle))
}

/// `access-log = true`: one line per request with peer, request line, status, bytes,
/// time, TLS version, cipher and client DN (SPEC §8).
#[test]
fn access_log_lines() {
    let _wd = watchdog("access_log_lines", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let port = free_port();
    let cfg = format!(
        "processes = 1\nthreads = 8\nhttps = [{}]\nhttp-to = {}\naccess-log = true\n",
        toml_str(&format!(
            "127.0.0.1:{port},server.crt,server.key,HIGH,ca.crt"
        )),
        toml_str(&peer.http_to())
    );
    let server = Server::start(env.dir(), &cfg, port);

    let mut c = connect(port, &env);
    let r = c.get("/logged?x=1").expect("GET /logged");
    assert_eq!(r.status, 200);
    let r = c.get("/status?code=404").expect("GET /status");
    assert_eq!(r.status, 404);
    c.send(
        format!("POST /posted HTTP/1.1\r\nHost: localhost:{port}\r\nContent-Length: 3\r\n\r\nabc")
            .as_bytes(),
    )
    .expect("POST");
    assert_eq!(c.response().expect("POST answer").status, 200);
    let mut cc = RawTls::connect_client(port, &env.certs, env.certs.client()).expect("client cert");
    assert_eq!(cc.get("/with-cert").expect("GET /with-cert").status, 200);
    let mut bad = connect(port, &env);
    bad.send(b"GET /no-host HTTP/1.1\r\n\r\n").expect("send");
    assert_eq!(bad.response().expect("400").status, 400);

    let needles = [
        "\"GET /logged?x=1 HTTP/1.1\" 200 ",
        "\"GET /status?code=404 HTTP/1.1\" 404 ",
        "\"POST /posted HTTP/1.1\" 200 ",
        "\"GET /with-cert HTTP/1.1\" 200 ",
        "\" 400 ",
    ];
    let mut log = String::new();
    let all = wait_until(Duration::from_secs(20), || {
        log = server.log();
        needles.iter().all(|n| access_line(&log, n).is_some())
    });
    assert!(
        all,
        "access-log lines missing (wanted {needles:?}); log:\n{log}"
    );
    let line = access_line(&log, needles[0]).unwrap();
    assert!(line.contains("127.0.0.1:"), "client address: {line}");
    assert!(line.contains("TLSv1."), "TLS version: {line}");
    assert!(line.trim_end().ends_with("\"-\""), "no client cert: {line}");
    let re = line.split(needles[0]).nth(1).unwrap_or("");
    let mut f = re.split_whitespace();
    let bytes: u64 = f.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    assert!(bytes > 0, "bytes sent: {line}");
    assert!(
        f.next().map(|t| t.ends_with('s')).unwrap_or(false),
        "time: {line}"
    );
    let cert_line = access_line(&log, needles[3]).unwrap();
    assert!(
        cert_line.trim_end().ends_with(&format!("\"{CLIENT_DN}\"")),
        "client DN in the access log: {cert_line}"
    );
    let n_logged = log
        .lines()
        .filter(|l| l.contains("\"GET /logged?x=1 HTTP/1.1\""))
        .count();
    assert_eq!(n_logged, 1, "one line per request:\n{log}");
}
