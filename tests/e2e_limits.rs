//! Smuggling defences, limits, timeouts and resource bounds (issue 4; SPEC §3 Listeners,
//! §5, §6): each bad request gets its status and a closed connection while the worker
//! goes on; idle and half-handshaken connections do not starve a normal client; a 1 GiB
//! answer streams with bounded worker memory.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::http_peers::{
    peer_byte, raise_nofile, vm_rss_kib, NextEvent, Peer, RawTls, PEER_BLOCK,
};
use common::{config, curl, free_port, watchdog, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(240);

fn start(env: &TestEnv, http_to: &str, extra: &str) -> (Server, u16) {
    let port = free_port();
    let server = Server::start(env.dir(), &config(port, Some(http_to), extra), port);
    (server, port)
}

fn connect(port: u16, env: &TestEnv) -> RawTls {
    RawTls::connect(port, &env.certs).unwrap_or_else(|e| panic!("TLS connect to {port}: {e}"))
}

/// Send `bytes` on a new connection; expect an answer with `status` and then the server
/// closing the connection; the backend must not have seen `path`.
fn expect_refusal(
    port: u16,
    env: &TestEnv,
    peer: &Peer,
    case: &str,
    bytes: &[u8],
    status: u16,
    path: &str,
) {
    let mut c = connect(port, env);
    c.set_timeout(Duration::from_secs(20));
    c.send(bytes)
        .unwrap_or_else(|e| panic!("case {case:?}: send: {e}"));
    let r = c.response().unwrap_or_else(|e| {
        panic!(
            "case {case:?}: expected a {status} answer, got none ({e}); sent {:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    });
    assert_eq!(
        r.status,
        status,
        "case {case:?}: sent {:?}, got {r:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
    );
    assert_eq!(
        c.next_event(Duration::from_secs(10)),
        NextEvent::Closed,
        "case {case:?}: the connection should be closed after the {status}"
    );
    assert!(
        peer.request_for(path).is_none(),
        "case {case:?}: the refused request reached the backend: {:?}",
        peer.request_for(path)
    );
}

fn normal_request_ok(port: u16, env: &TestEnv, what: &str) {
    let mut c = connect(port, env);
    let r = c
        .get("/normal")
        .unwrap_or_else(|e| panic!("{what}: a normal request: {e}"));
    assert_eq!(r.status, 200, "{what}: a normal request: {r:?}");
}

// ------------------------------------------------------------ acceptance 3

/// Every smuggling shape of SPEC §6 gets 400 and a closed connection; a head over
/// buffer-size 431; a body over max-body 413 (by Content-Length and chunked); bad chunk
/// framing 400. None reaches the backend, and the same worker then serves a normal
/// request.
#[test]
fn smuggling_and_limits_get_their_status_and_close() {
    let _wd = watchdog("smuggling_and_limits_get_their_status_and_close", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (server, port) = start(
        &env,
        &peer.http_to(),
        "buffer-size = 4096\nmax-body = 1000\n",
    );
    let workers = server.wait_workers(1, Duration::from_secs(30));
    let h = format!("Host: localhost:{port}\r\n");
    let big = "a".repeat(6000);
    let chunk = "b".repeat(1500);
    let cases: Vec<(&str, String, u16)> = vec![
        ("CL and TE", format!("POST /case HTTP/1.1\r\n{h}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"), 400),
        ("TE and CL", format!("POST /case HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"), 400),
        ("differing CLs", format!("POST /case HTTP/1.1\r\n{h}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello"), 400),
        ("differing CLs in one field", format!("POST /case HTTP/1.1\r\n{h}Content-Length: 5, 6\r\n\r\nhello"), 400),
        ("negative CL", format!("POST /case HTTP/1.1\r\n{h}Content-Length: -1\r\n\r\n"), 400),
        ("non-numeric CL", format!("POST /case HTTP/1.1\r\n{h}Content-Length: 1e3\r\n\r\n"), 400),
        ("unknown coding", format!("POST /case HTTP/1.1\r\n{h}Transfer-Encoding: gzip\r\n\r\n"), 400),
        ("unknown coding before chunked", format!("POST /case HTTP/1.1\r\n{h}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"), 400),
        ("mangled chunked", format!("POST /case HTTP/1.1\r\n{h}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"), 400),
        ("bare LF everywhere", format!("GET /case HTTP/1.1\n{}\n\n", h.trim_end()), 400),
        ("bare LF in one header", format!("GET /case HTTP/1.1\r\n{h}X-A: 1\nX-B: 2\r\n\r\n"), 400),
        ("space before colon", format!("GET /case HTTP/1.1\r\nHost : localhost:{port}\r\n\r\n"), 400),
        ("tab in header name", format!("GET /case HTTP/1.1\r\n{h}X-A\t: 1\r\n\r\n"), 400),
        ("space inside header name", format!("GET /case HTTP/1.1\r\n{h}X A: 1\r\n\r\n"), 400),
        ("obs-fold", format!("GET /case HTTP/1.1\r\n{h}X-A: 1\r\n folded\r\n\r\n"), 400),
        ("obs-fold with tab", format!("GET /case HTTP/1.1\r\n{h}X-A: 1\r\n\tfolded\r\n\r\n"), 400),
        ("missing Host in HTTP/1.1", "GET /case HTTP/1.1\r\nX-A: 1\r\n\r\n".to_string(), 400),
        ("two Hosts", format!("GET /case HTTP/1.1\r\n{h}{h}\r\n"), 400),
        ("bad chunk size", format!("POST /case HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"), 400),
        ("head over buffer-size", format!("GET /case HTTP/1.1\r\n{h}X-Big: {big}\r\n\r\n"), 431),
        ("CL over max-body", format!("POST /case HTTP/1.1\r\n{h}Content-Length: 1001\r\n\r\n"), 413),
        ("chunked over max-body", format!("POST /case HTTP/1.1\r\n{h}Transfer-Encoding: chunked\r\n\r\n5dc\r\n{chunk}\r\n0\r\n\r\n"), 413),
    ];
    for (case, bytes, status) in &cases {
        expect_refusal(port, &env, &peer, case, bytes.as_bytes(), *status, "/case");
    }
    normal_request_ok(port, &env, "after every refusal");
    assert_eq!(
        server.workers(),
        workers,
        "the worker should have served every refusal and go on (same pid)"
    );
    // At the limits exactly: accepted.
    let mut c = connect(port, &env);
    let body = "c".repeat(1000);
    c.send(format!("POST /at-limit HTTP/1.1\r\n{h}Content-Length: 1000\r\n\r\n{body}").as_bytes())
        .expect("send");
    let r = c.response().expect("answer at max-body");
    assert_eq!(r.status, 200, "a body of exactly max-body: {r:?}");
}

/// uwsgi vars over 65,535 bytes in total: 431 (with buffer-size large enough for the
/// head); just under: passed on whole.
#[test]
fn uwsgi_vars_over_64k_get_431() {
    let _wd = watchdog("uwsgi_vars_over_64k_get_431", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (server, port) = start(&env, &peer.http_to(), "buffer-size = 131072\n");
    let workers = server.wait_workers(1, Duration::from_secs(30));
    let h = format!("Host: localhost:{port}\r\n");
    let fill = "v".repeat(7000);
    let headers =
        |n: usize| -> String { (0..n).map(|i| format!("X-Fill-{i}: {fill}\r\n")).collect() };

    expect_refusal(
        port,
        &env,
        &peer,
        "70 KB of headers (vars over 64 KiB)",
        format!("GET /vars-big HTTP/1.1\r\n{h}{}\r\n", headers(10)).as_bytes(),
        431,
        "/vars-big",
    );
    let mut c = connect(port, &env);
    c.send(format!("GET /vars-fit HTTP/1.1\r\n{h}{}\r\n", headers(8)).as_bytes())
        .expect("send");
    let r = c.response().expect("answer");
    assert_eq!(
        r.status, 200,
        "56 KB of headers fit in a uwsgi packet: {r:?}"
    );
    let req = peer
        .request_for("/vars-fit")
        .expect("the backend got /vars-fit");
    assert_eq!(req.get("HTTP_X_FILL_7").map(str::len), Some(7000));
    normal_request_ok(port, &env, "after the 431");
    assert_eq!(server.workers(), workers);
}

/// Chunked bodies are buffered for uwsgi backends (which need CONTENT_LENGTH) up to
/// chunked-input-limit, else 413; toward an HTTP backend they stream, so the limit does
/// not apply.
#[test]
fn chunked_input_limit_applies_to_uwsgi_backends() {
    let _wd = watchdog("chunked_input_limit_applies_to_uwsgi_backends", LIMIT);
    let env = TestEnv::new();
    let chunked = |port: u16, path: &str, n: usize| -> String {
        let data = "d".repeat(n);
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost:{port}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{data}\r\n0\r\n\r\n",
            n
        )
    };
    let uw = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (_s1, p1) = start(&env, &uw.http_to(), "chunked-input-limit = 4096\n");
    expect_refusal(
        p1,
        &env,
        &uw,
        "chunked 5000 > chunked-input-limit",
        chunked(p1, "/over", 5000).as_bytes(),
        413,
        "/over",
    );
    let mut c = connect(p1, &env);
    c.send(chunked(p1, "/under", 4000).as_bytes())
        .expect("send");
    let r = c.response().expect("answer");
    assert_eq!(r.status, 200, "{r:?}");
    let req = uw.request_for("/under").expect("backend got /under");
    assert_eq!(req.get("CONTENT_LENGTH"), Some("4000"), "{req:?}");
    assert_eq!(req.body_len, 4000);

    let env2 = TestEnv::new();
    let http = Peer::http_tcp();
    let (_s2, p2) = start(&env2, &http.http_to(), "chunked-input-limit = 4096\n");
    let mut c = connect(p2, &env2);
    c.send(chunked(p2, "/streamed", 50_000).as_bytes())
        .expect("send");
    let r = c.response().expect("answer");
    assert_eq!(r.status, 200, "chunked body toward an HTTP backend: {r:?}");
    let req = http
        .request_for("/streamed")
        .expect("backend got /streamed");
    assert!(
        req.chunked,
        "re-chunked toward the HTTP backend: {}",
        req.raw_head
    );
    assert_eq!(req.body_len, 50_000);
}

// ------------------------------------------------------------ timeouts

/// A request head trickled in byte by byte must be complete within http-headers-timeout
/// (in total), or the connection ends (408 or close).
#[test]
fn slow_head_ends_at_headers_timeout() {
    let _wd = watchdog("slow_head_ends_at_headers_timeout", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (_server, port) = start(&env, &peer.http_to(), "http-headers-timeout = 2\n");
    let mut c = connect(port, &env);
    let t0 = Instant::now();
    c.send(b"GET /slow HTTP/1.1\r\n").expect("send");
    let mut ended = None;
    for i in 0..40 {
        std::thread::sleep(Duration::from_millis(250));
        if c.send(format!("X-{i}: y\r\n").as_bytes()).is_err() {
            ended = Some(t0.elapsed());
            break;
        }
        match c.next_event(Duration::from_millis(1)) {
            NextEvent::Open => {}
            _ => {
                ended = Some(t0.elapsed());
                break;
            }
        }
    }
    let took = ended
        .expect("a head trickled for 10 s should have been cut off after http-headers-timeout = 2");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(7),
        "the trickled head should end after about 2 s, ended after {took:?}"
    );
    assert!(peer.request_for("/slow").is_none());
}

/// A connection that completes the handshake and never sends a request is closed after
/// http-headers-timeout (it must not hold anything longer).
#[test]
fn silent_connection_closed_after_headers_timeout() {
    let _wd = watchdog("silent_connection_closed_after_headers_timeout", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (_server, port) = start(
        &env,
        &peer.http_to(),
        "http-headers-timeout = 2\nhttp-keepalive = 30\n",
    );
    let mut c = connect(port, &env);
    let t0 = Instant::now();
    let ev = c.next_event(Duration::from_secs(20));
    let took = t0.elapsed();
    assert_ne!(
        ev,
        NextEvent::Open,
        "a connection that never sends a request should be closed"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(8),
        "closed after {took:?}; http-headers-timeout = 2"
    );
}

/// Idle keep-alive connections are parked and hold no serving thread: with 2 threads,
/// 50 idle kept-alive connections do not keep a new client out, and each can still send
/// its next request.
#[test]
fn idle_keepalive_connections_hold_no_thread() {
    let _wd = watchdog("idle_keepalive_connections_hold_no_thread", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let port = free_port();
    let cfg = config(port, Some(&peer.http_to()), "http-keepalive = 60\n")
        .replace("threads = 8\n", "threads = 2\n");
    assert!(cfg.contains("threads = 2\n"));
    let _server = Server::start(env.dir(), &cfg, port);
    let mut idle = Vec::new();
    for i in 0..50 {
        let mut c = connect(port, &env);
        let r = c.get(&format!("/first-{i}")).expect("first request");
        assert_eq!(r.status, 200, "{r:?}");
        idle.push(c);
    }
    let t0 = Instant::now();
    let mut c = connect(port, &env);
    let r = c
        .get("/newcomer")
        .expect("a new client beside 50 idle kept-alive connections");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "a new client waited {:?} beside 50 idle connections and 2 threads",
        t0.elapsed()
    );
    for (i, c) in idle.iter_mut().enumerate() {
        let r = c
            .get(&format!("/second-{i}"))
            .unwrap_or_else(|e| panic!("idle connection {i}: second request: {e}"));
        assert_eq!(r.status, 200, "{r:?}");
    }
}

/// An idle kept-alive connection is closed after http-keepalive, not earlier.
#[test]
fn idle_keepalive_connection_closed_after_http_keepalive() {
    let _wd = watchdog(
        "idle_keepalive_connection_closed_after_http_keepalive",
        LIMIT,
    );
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (_server, port) = start(&env, &peer.http_to(), "http-keepalive = 3\n");
    let mut c = connect(port, &env);
    assert_eq!(c.get("/one").expect("first request").status, 200);
    let t0 = Instant::now();
    let ev = c.next_event(Duration::from_secs(20));
    let took = t0.elapsed();
    assert_eq!(
        ev,
        NextEvent::Closed,
        "the idle connection should be closed"
    );
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(8),
        "closed after {took:?}; http-keepalive = 3"
    );
}

// ------------------------------------------------------------ acceptance 5

/// The first 50 bytes of a TLS 1.2/1.3 ClientHello: a record header announcing 512 bytes,
/// then the start of the handshake message. The rest never comes.
fn partial_client_hello() -> Vec<u8> {
    let mut v = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    v.extend((0..39u8).map(|i| i.wrapping_mul(37)));
    v
}

/// 1,000 TCP connections that never send a byte and 200 that stop in the middle of the
/// TLS handshake (handshake-timeout = 5, one worker with 8 threads): a normal request gets
/// 200 within 2 × handshake-timeout, right away and for the next 30 s.
#[test]
fn idle_and_half_handshaken_connections_do_not_starve_clients() {
    let _wd = watchdog(
        "idle_and_half_handshaken_connections_do_not_starve_clients",
        LIMIT,
    );
    hold_and_probe(1000, 200);
}

/// The same with only the 1,000 idle TCP connections (TCP_DEFER_ACCEPT's part).
#[test]
fn idle_tcp_connections_do_not_starve_clients() {
    let _wd = watchdog("idle_tcp_connections_do_not_starve_clients", LIMIT);
    hold_and_probe(1000, 0);
}

/// The same with only the 200 half-handshaken connections (the handshake's part).
#[test]
fn half_handshaken_connections_do_not_starve_clients() {
    let _wd = watchdog("half_handshaken_connections_do_not_starve_clients", LIMIT);
    hold_and_probe(0, 200);
}

fn hold_and_probe(idle: usize, half: usize) {
    let env = TestEnv::new();
    let have = raise_nofile(4096);
    assert!(
        have >= 1400,
        "RLIMIT_NOFILE is {have}; need 1,400 descriptors"
    );
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let port = free_port();
    let cfg = config(port, Some(&peer.http_to()), "handshake-timeout = 5\n");
    assert!(cfg.contains("processes = 1\nthreads = 8\n"));
    let server = Server::start(env.dir(), &cfg, port);
    let workers = server.wait_workers(1, Duration::from_secs(30));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    let mut held: Vec<TcpStream> = Vec::with_capacity(idle + half);
    for i in 0..idle {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}"));
        held.push(s);
    }
    let hello = partial_client_hello();
    for i in 0..half {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("half-handshake connection {i}: {e}"));
        s.write_all(&hello).expect("send a partial ClientHello");
        held.push(s);
    }
    eprintln!("holding {} connections", held.len());

    let limit = Duration::from_secs(10);
    let t_start = Instant::now();
    let mut samples = Vec::new();
    loop {
        let t0 = Instant::now();
        let out = curl(&env.certs, port, "/under-load").max_time(30).run();
        let took = t0.elapsed();
        samples.push((
            t_start.elapsed().as_secs_f32(),
            took.as_secs_f32(),
            out.status,
        ));
        assert_eq!(
            out.status,
            Some(200),
            "a normal request {:.1} s after opening {idle} idle and {half} half-handshaken \
             connections: {out:?}; samples (at s, took s, status): {samples:?}",
            t_start.elapsed().as_secs_f32()
        );
        assert!(
            took < limit,
            "a normal request took {took:?} (> 2 × handshake-timeout = {limit:?}) {:.1} s after \
             opening the connections; samples (at s, took s, status): {samples:?}",
            t_start.elapsed().as_secs_f32()
        );
        if t_start.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    eprintln!("samples (at s, took s, status): {samples:?}");
    // The half-handshaken ones were closed by the server after handshake-timeout.
    let mut closed = 0;
    for s in held[idle..].iter_mut() {
        s.set_read_timeout(Some(Duration::from_millis(50))).ok();
        let mut b = [0u8; 64];
        if matches!(s.read(&mut b), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    eprintln!("{closed} of {half} half-handshaken connections closed by the server");
    drop(held);
    assert_eq!(
        server.workers(),
        workers,
        "the worker should not have been replaced"
    );
}

// ------------------------------------------------------------ acceptance 6

/// A 1 GiB answer (Content-Length, made on the fly by the backend) streams to a client
/// that reads and checks every byte, while the worker's RSS grows by less than 32 MiB.
#[test]
fn one_gib_response_streams_with_bounded_worker_memory() {
    let _wd = watchdog("one_gib_response_streams_with_bounded_worker_memory", LIMIT);
    let env = TestEnv::new();
    let peer = Peer::uwsgi_unix(&env.path("peer.sock"));
    let (server, port) = start(&env, &peer.http_to(), "");
    let worker = server.wait_workers(1, Duration::from_secs(30))[0];

    // Warm up (buffers, TLS), then take the baseline.
    let mut c = connect(port, &env);
    let r = c.get("/big?n=4000000").expect("warm-up");
    assert_eq!(r.status, 200);
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    let base = vm_rss_kib(worker).expect("worker VmRSS");

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(base));
    let sampler = {
        let stop = stop.clone();
        let peak = peak.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if let Some(kib) = vm_rss_kib(worker) {
                    peak.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    const N: u64 = 1 << 30;
    let t0 = Instant::now();
    let mut c = connect(port, &env);
    c.set_timeout(Duration::from_secs(60));
    c.send(format!("GET /big?n={N} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n").as_bytes())
        .expect("send");
    let head = c.head_response().expect("response head");
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("content-length"),
        Some(N.to_string().as_str()),
        "{head:?}"
    );

    const BUF: usize = 256 * 1024;
    let pattern: Vec<u8> = (0..(PEER_BLOCK + BUF) as u64).map(peer_byte).collect();
    let mut buf = vec![0u8; BUF];
    let mut got: u64 = 0;
    while got < N {
        let want = ((N - got) as usize).min(BUF);
        let n =
            c.r.read(&mut buf[..want])
                .unwrap_or_else(|e| panic!("reading the body at byte {got}: {e}"));
        assert!(n > 0, "the body ended at byte {got} of {N}");
        let off = (got % PEER_BLOCK as u64) as usize;
        assert!(
            buf[..n] == pattern[off..off + n],
            "body differs near byte {got}"
        );
        got += n as u64;
    }
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    sampler.join().expect("sampler");
    let peak = peak.load(Ordering::SeqCst);
    let growth_mib = peak.saturating_sub(base) as f64 / 1024.0;
    eprintln!(
        "1 GiB in {took:?} ({:.0} MiB/s); worker RSS base {base} KiB, peak {peak} KiB, growth {growth_mib:.1} MiB",
        1024.0 / took.as_secs_f64()
    );
    assert!(
        growth_mib < 32.0,
        "worker RSS grew by {growth_mib:.1} MiB (base {base} KiB, peak {peak} KiB) while \
         streaming 1 GiB"
    );
    // The connection goes on.
    let r = c.get("/after-big").expect("request after the 1 GiB answer");
    assert_eq!(r.status, 200, "{r:?}");
}
