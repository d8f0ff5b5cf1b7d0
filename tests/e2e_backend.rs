//! HTTPS → uwsgi backend: vars, transports, big bodies, keep-alive, errors.
//! (SPEC §5, §6)

mod common;

use std::time::Duration;

use common::backend::Vars;
use common::{config, curl, free_port, var, watchdog, Backend, Server, TestEnv, TlsConn};

const LIMIT: Duration = Duration::from_secs(120);

/// Start a master with one listener forwarding to `http_to`.
fn start(env: &TestEnv, http_to: &str) -> (Server, u16) {
    let port = free_port();
    let server = Server::start(env.dir(), &config(port, Some(http_to), ""), port);
    (server, port)
}

fn expect_var(vars: &Vars, key: &str, want: &str) {
    assert_eq!(
        var(vars, key),
        Some(want),
        "backend var {key}: expected {want:?}; all vars: {vars:#?}"
    );
}

fn backend_request(backend: &Backend, path: &str) -> Vars {
    backend.request_for(path).unwrap_or_else(|| {
        panic!(
            "backend saw no request with PATH_INFO={path:?}; it saw: {:#?}; errors: {:?}",
            backend.requests(),
            backend.errors()
        )
    })
}

/// A GET through the unix-socket backend: the uwsgi vars are right, and a
/// percent-encoded path is decoded in PATH_INFO only.
#[test]
fn get_passes_cgi_vars_to_backend() {
    let _wd = watchdog("get_passes_cgi_vars_to_backend", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let (_server, port) = start(&env, &backend.http_to());

    let out = curl(&env.certs, port, "/x?y=1").run();
    assert_eq!(out.status, Some(200), "GET /x?y=1: {out:?}");
    assert!(
        out.text().contains("REQUEST_METHOD=GET"),
        "the backend's echo body should come back to the client: {out:?}"
    );

    let v = backend_request(&backend, "/x");
    expect_var(&v, "REQUEST_METHOD", "GET");
    expect_var(&v, "PATH_INFO", "/x");
    expect_var(&v, "QUERY_STRING", "y=1");
    expect_var(&v, "REQUEST_URI", "/x?y=1");
    expect_var(&v, "HTTPS", "on");
    expect_var(&v, "UWSGI_SCHEME", "https");
    expect_var(&v, "SERVER_PROTOCOL", "HTTP/1.1");
    expect_var(&v, "HTTP_HOST", &format!("localhost:{port}"));
    expect_var(&v, "REMOTE_ADDR", "127.0.0.1");
    expect_var(&v, "SERVER_PORT", &port.to_string());
    expect_var(&v, "SCRIPT_NAME", "");
    expect_var(&v, "UWSGI_ROUTER", "http");
    assert!(
        var(&v, "REMOTE_PORT")
            .and_then(|p| p.parse::<u16>().ok())
            .is_some(),
        "REMOTE_PORT should be a port number: {v:#?}"
    );
    assert!(
        var(&v, "SERVER_NAME").is_some(),
        "SERVER_NAME missing: {v:#?}"
    );
    assert!(
        var(&v, "HTTP_USER_AGENT")
            .map(|ua| ua.starts_with("curl/"))
            .unwrap_or(false),
        "HTTP_USER_AGENT should carry curl's User-Agent: {v:#?}"
    );

    let out = curl(&env.certs, port, "/a%20b").arg("--path-as-is").run();
    assert_eq!(out.status, Some(200), "GET /a%20b: {out:?}");
    let v = backend_request(&backend, "/a b");
    expect_var(&v, "PATH_INFO", "/a b");
    expect_var(&v, "REQUEST_URI", "/a%20b");
    expect_var(&v, "QUERY_STRING", "");
}

fn transport_roundtrip(env: &TestEnv, backend: &Backend, http_to: &str) {
    let (_server, port) = start(env, http_to);
    let out = curl(&env.certs, port, "/transport?t=1").run();
    assert_eq!(
        out.status,
        Some(200),
        "GET via http-to={http_to:?}: {out:?}"
    );
    let v = backend_request(backend, "/transport");
    expect_var(&v, "QUERY_STRING", "t=1");
    expect_var(&v, "HTTPS", "on");
    assert!(
        out.text().contains("PATH_INFO=/transport"),
        "echo body should come back: {out:?}"
    );
    assert_eq!(
        backend.connections(),
        1,
        "one request, one backend connection"
    );
}

/// `http-to = "/path/x.sock"`: uwsgi over a unix socket.
#[test]
fn transport_unix_socket_path() {
    let _wd = watchdog("transport_unix_socket_path", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("x.sock"));
    let to = backend.http_to();
    assert!(to.starts_with('/'), "{to}");
    transport_roundtrip(&env, &backend, &to);
}

/// `http-to = "unix:/path/x.sock"`: uwsgi over a unix socket.
#[test]
fn transport_unix_prefix() {
    let _wd = watchdog("transport_unix_prefix", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("x.sock"));
    let to = format!("unix:{}", backend.http_to());
    transport_roundtrip(&env, &backend, &to);
}

/// `http-to = "127.0.0.1:P"`: uwsgi over TCP.
#[test]
fn transport_tcp() {
    let _wd = watchdog("transport_tcp", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::tcp();
    let to = backend.http_to();
    assert!(to.starts_with("127.0.0.1:"), "{to}");
    transport_roundtrip(&env, &backend, &to);
}

/// A 1 MiB request body arrives intact at the backend.
#[test]
fn post_1mib_body_arrives_intact() {
    let _wd = watchdog("post_1mib_body_arrives_intact", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let (_server, port) = start(&env, &backend.http_to());

    let mut data = vec![0u8; 1 << 20];
    openssl::rand::rand_bytes(&mut data).expect("random body");
    let file = env.path("body.bin");
    std::fs::write(&file, &data).expect("write body.bin");
    let sha = common::sha256_hex(&data);

    let out = curl(&env.certs, port, "/upload")
        .arg("-H")
        .arg("Content-Type: application/octet-stream")
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .run();
    assert_eq!(out.status, Some(200), "POST 1 MiB: {out:?}");
    let text = out.text();
    assert!(
        text.contains(&format!("BODY-SHA256={sha}\n")),
        "backend's body sha should be {sha}: {out:?}"
    );
    assert!(text.contains("BODY-LEN=1048576\n"), "{out:?}");

    let v = backend_request(&backend, "/upload");
    expect_var(&v, "REQUEST_METHOD", "POST");
    expect_var(&v, "CONTENT_LENGTH", "1048576");
    expect_var(&v, "CONTENT_TYPE", "application/octet-stream");
}

/// 1 MiB responses, Content-Length framed and chunked, stream back intact.
#[test]
fn big_responses_stream_back_intact() {
    let _wd = watchdog("big_responses_stream_back_intact", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let (_server, port) = start(&env, &backend.http_to());
    let n = 1usize << 20;
    let want = common::big_pattern(n);
    let want_sha = common::sha256_hex(&want);

    for path in ["/big", "/bigchunked"] {
        let out = curl(&env.certs, port, &format!("{path}?n={n}")).run();
        assert_eq!(out.status, Some(200), "GET {path}: {out:?}");
        assert_eq!(out.body.len(), n, "GET {path}: body length");
        assert_eq!(
            common::sha256_hex(&out.body),
            want_sha,
            "GET {path}: body content differs from the backend's"
        );
    }
}

/// Big responses of both framings, then a small one, on one kept-alive
/// connection: framing is passed through correctly.
#[test]
fn big_responses_on_one_keepalive_connection() {
    let _wd = watchdog("big_responses_on_one_keepalive_connection", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let (_server, port) = start(&env, &backend.http_to());
    let n = 300_000usize;
    let want = common::big_pattern(n);

    let mut conn = TlsConn::connect(port, &env.certs).expect("TLS connect");
    for path in ["/big", "/bigchunked", "/small"] {
        let full = if path == "/small" {
            path.to_string()
        } else {
            format!("{path}?n={n}")
        };
        let resp = conn
            .get(&full)
            .unwrap_or_else(|e| panic!("GET {full} on the kept-alive connection: {e}"));
        assert_eq!(resp.status, 200, "GET {full}: {resp:?}");
        if path == "/small" {
            assert!(resp.text().contains("PATH_INFO=/small"), "{resp:?}");
        } else {
            assert!(
                resp.body == want,
                "GET {full}: body differs ({} bytes)",
                resp.body.len()
            );
        }
    }
}

/// Three requests on one kept-alive TLS connection.
#[test]
fn keepalive_three_requests_on_one_connection() {
    let _wd = watchdog("keepalive_three_requests_on_one_connection", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let (_server, port) = start(&env, &backend.http_to());

    let mut conn = TlsConn::connect(port, &env.certs).expect("TLS connect");
    for i in 1..=3 {
        let path = format!("/ka{i}");
        let resp = conn
            .get(&path)
            .unwrap_or_else(|e| panic!("request {i} ({path}) on the kept-alive connection: {e}"));
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert!(
            resp.text().contains(&format!("PATH_INFO={path}\n")),
            "request {i} got someone else's answer: {resp:?}"
        );
        if i < 3 {
            assert!(
                !resp
                    .header("connection")
                    .map(|c| c.eq_ignore_ascii_case("close"))
                    .unwrap_or(false),
                "response {i} closes the connection: {resp:?}"
            );
        }
    }
    for i in 1..=3 {
        backend_request(&backend, &format!("/ka{i}"));
    }
}

/// curl with two URLs in one invocation reuses the connection.
#[test]
fn curl_reuses_the_connection() {
    let _wd = watchdog("curl_reuses_the_connection", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let (_server, port) = start(&env, &backend.http_to());

    let out = curl(&env.certs, port, "/one")
        .url(&format!("https://localhost:{port}/two"))
        .arg("-v")
        .run();
    assert_eq!(out.exit, 0, "{out:?}");
    assert_eq!(out.status, Some(200), "{out:?}");
    let text = out.text();
    assert!(text.contains("PATH_INFO=/one"), "{out:?}");
    assert!(text.contains("PATH_INFO=/two"), "{out:?}");
    assert!(
        out.stderr.contains("Re-using existing connection"),
        "curl did not reuse the connection for the second URL: {}",
        out.stderr
    );
}

/// A backend nobody listens on gives 502 (stale socket file and missing
/// socket file), and the server keeps running.
#[test]
fn backend_down_gives_502() {
    let _wd = watchdog("backend_down_gives_502", LIMIT);
    let env = TestEnv::new();

    // A socket file whose listener is gone: connect gets ECONNREFUSED.
    let stale = env.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind stale.sock"));
    assert!(stale.exists());
    // A socket path that does not exist at all: connect gets ENOENT.
    let missing = env.path("missing.sock");

    for to in [&stale, &missing] {
        let port = free_port();
        let to = to.display().to_string();
        let server = Server::start(env.dir(), &config(port, Some(&to), ""), port);
        for attempt in 1..=2 {
            let out = curl(&env.certs, port, "/down").run();
            assert_eq!(
                out.status,
                Some(502),
                "attempt {attempt} with http-to={to:?} (nobody listening): {out:?}"
            );
        }
        drop(server);
    }
}

/// A malformed request line over TLS gets 400; the next connection works.
#[test]
fn malformed_request_gets_400_and_server_goes_on() {
    let _wd = watchdog("malformed_request_gets_400_and_server_goes_on", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let (_server, port) = start(&env, &backend.http_to());

    let mut conn = TlsConn::connect(port, &env.certs).expect("TLS connect");
    conn.send(b"GARBAGE\r\n\r\n").expect("send garbage");
    let resp = conn
        .read_response()
        .expect("an HTTP answer to a malformed request line");
    assert_eq!(resp.status, 400, "{resp:?}");
    assert!(
        conn.closed_within(Duration::from_secs(10)),
        "connection should be closed after a 400 for a malformed request"
    );
    assert!(
        backend.requests().is_empty(),
        "a malformed request must not reach the backend: {:#?}",
        backend.requests()
    );

    let out = curl(&env.certs, port, "/after").run();
    assert_eq!(
        out.status,
        Some(200),
        "next connection after the 400: {out:?}"
    );
}

/// A request waiting for a slow application holds no thread: with `threads = 2`, twelve
/// concurrent requests to a backend that answers after 1.5 s all get their answer in about
/// 1.5 s (two blocked threads would take six rounds: 9 s).
#[test]
fn slow_backend_answers_do_not_hold_threads() {
    let _wd = watchdog("slow_backend_answers_do_not_hold_threads", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let cfg = format!(
        "processes = 1\nthreads = 2\nhttps = [{}]\nhttp-to = {}\n",
        common::toml_str(&format!("127.0.0.1:{port},server.crt,server.key")),
        common::toml_str(&backend.http_to())
    );
    let _server = Server::start(env.dir(), &cfg, port);

    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..12)
        .map(|i| {
            let certs = env.certs.clone();
            std::thread::spawn(move || {
                let mut conn = TlsConn::connect(port, &certs)?;
                conn.get(&format!("/slow?ms=1500&n={i}"))
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    for (i, client) in clients.into_iter().enumerate() {
        let resp = client
            .join()
            .expect("client thread")
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(resp.status, 200, "request {i}: {resp:?}");
        assert!(
            resp.text()
                .contains(&format!("QUERY_STRING=ms=1500&n={i}\n")),
            "request {i} got someone else's answer: {resp:?}"
        );
    }
    let took = started.elapsed();
    eprintln!("12 requests of 1.5 s each through 2 threads took {took:?}");
    assert!(
        took < Duration::from_millis(4500),
        "12 concurrent 1.5 s requests with threads = 2 took {took:?}: requests waiting for \
         their backend hold threads"
    );
}
