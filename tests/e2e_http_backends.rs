//! Real application servers behind the proxy (issue 4, acceptance 1 and 2; SPEC §5):
//! a real uWSGI (Debian uwsgi-core + uwsgi-plugin-python3) over the uwsgi protocol and
//! gunicorn (PyPI) over HTTP/1.1, both serving tests/apps/echo.py, which answers its WSGI
//! environ as JSON; and a test-code HTTP/1.1 backend that shows exactly which headers
//! arrive.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::certs::CLIENT_DN;
use common::http_peers::{AppServer, EchoEnv, Peer, RawTls};
use common::{curl, free_port, toml_str, watchdog, Curl, CurlOut, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(240);

/// One listener that requests (and verifies) client certificates against the test CA,
/// forwarding to `http_to`, with `https-export-cert = true`.
fn start(env: &TestEnv, http_to: &str) -> (Server, u16) {
    let port = free_port();
    let cfg = format!(
        "processes = 1\nthreads = 8\nhttps = [{}]\nhttp-to = {}\nhttps-export-cert = true\n",
        toml_str(&format!(
            "127.0.0.1:{port},server.crt,server.key,HIGH,ca.crt"
        )),
        toml_str(http_to)
    );
    let server = Server::start(env.dir(), &cfg, port);
    (server, port)
}

fn echo_env(out: &CurlOut, what: &str) -> EchoEnv {
    assert_eq!(out.status, Some(200), "{what}: {out:?}");
    EchoEnv::parse(&out.text()).unwrap_or_else(|e| {
        panic!("{what}: the app's answer is not its JSON environ ({e}): {out:?}")
    })
}

/// `path` with a UTF-8 percent-encoded path, a query string with escapes, repeated
/// headers, repeated cookies and a header name with an underscore.
const ODD_PATH: &str = "/wsgi/caf%C3%A9%20x?q=a%20b&r=%2F&s=%C3%A9";

fn odd_get(env: &TestEnv, port: u16) -> Curl {
    curl(&env.certs, port, ODD_PATH)
        .arg("--path-as-is")
        .arg("-H")
        .arg("X-Multi: one")
        .arg("-H")
        .arg("X-Multi: two")
        .arg("-H")
        .arg("Cookie: a=1")
        .arg("-H")
        .arg("Cookie: b=2")
        .arg("-H")
        .arg("X_Under: should-not-pass")
}

/// A file of `n` random bytes in the env's folder; its path and SHA-256.
fn random_file(env: &TestEnv, name: &str, n: usize) -> (std::path::PathBuf, String) {
    let mut data = vec![0u8; n];
    openssl::rand::rand_bytes(&mut data).expect("random bytes");
    let path = env.path(name);
    std::fs::write(&path, &data).expect("write body file");
    (path, common::sha256_hex(&data))
}

fn post_file(env: &TestEnv, port: u16, path: &str, file: &Path, chunked: bool) -> CurlOut {
    let mut c = curl(&env.certs, port, path)
        .arg("-v")
        .arg("-H")
        .arg("Content-Type: application/octet-stream")
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .max_time(120);
    if chunked {
        c = c.arg("-H").arg("Transfer-Encoding: chunked");
    }
    c.run()
}

/// Checks common to both app servers: a GET, a 5 MiB POST (with curl's
/// `Expect: 100-continue`), a chunked POST, and a client certificate.
fn wsgi_suite(env: &TestEnv, port: u16, server_name: &str) -> (EchoEnv, EchoEnv, EchoEnv) {
    let what = |s: &str| format!("{server_name}: {s}");

    // GET: the values a WSGI app expects.
    let e = echo_env(&odd_get(env, port).run(), &what("GET"));
    e.expect("REQUEST_METHOD", "GET");
    e.expect("wsgi.url_scheme", "https");
    e.expect("PATH_INFO", "/wsgi/café x");
    e.expect("QUERY_STRING", "q=a%20b&r=%2F&s=%C3%A9");
    e.expect("SERVER_PROTOCOL", "HTTP/1.1");
    e.expect("HTTP_HOST", &format!("localhost:{port}"));
    e.expect("SCRIPT_NAME", "");
    e.expect("BODY_LEN", "0");
    assert!(
        e.get("HTTP_X_UNDER").is_none(),
        "{}: a header name with '_' must not reach the app: {:#?}",
        server_name,
        e.sorted()
    );
    let get = e;

    // POST 5 MiB: every byte arrives; curl asks `Expect: 100-continue` first.
    let (file, sha) = random_file(env, "5mib.bin", 5 << 20);
    let out = post_file(env, port, "/upload", &file, false);
    let e = echo_env(&out, &what("POST 5 MiB"));
    e.expect("REQUEST_METHOD", "POST");
    e.expect("CONTENT_LENGTH", &(5u64 << 20).to_string());
    e.expect("CONTENT_TYPE", "application/octet-stream");
    e.expect("BODY_LEN", &(5u64 << 20).to_string());
    e.expect("BODY_SHA256", &sha);
    assert!(
        out.stderr.contains("Expect: 100-continue") && out.stderr.contains("HTTP/1.1 100 Continue"),
        "{server_name}: curl should have asked `Expect: 100-continue` and got `100 Continue`: {}",
        out.stderr
    );

    // Chunked POST (curl -H 'Transfer-Encoding: chunked').
    let (file, sha) = random_file(env, "chunked.bin", 300_000);
    let out = post_file(env, port, "/chunked-upload", &file, true);
    assert!(
        out.stderr.contains("Transfer-Encoding: chunked"),
        "curl should send chunked: {}",
        out.stderr
    );
    let e = echo_env(&out, &what("chunked POST"));
    e.expect("BODY_LEN", "300000");
    e.expect("BODY_SHA256", &sha);
    let chunked = e;

    // A client certificate.
    let out = curl(&env.certs, port, "/with-cert")
        .client_cert(env.certs.client())
        .run();
    let cert = echo_env(&out, &what("GET with a client certificate"));
    cert.expect("wsgi.url_scheme", "https");
    (get, cert, chunked)
}

// ------------------------------------------------------------ acceptance 1: uWSGI

/// A real uWSGI application server behind us: GET, 5 MiB POST, chunked POST, percent-
/// encoding, repeated headers and a client certificate come through with the values WSGI
/// expects.
#[test]
fn real_uwsgi_app_server_gets_what_wsgi_expects() {
    let _wd = watchdog("real_uwsgi_app_server_gets_what_wsgi_expects", LIMIT);
    let env = TestEnv::new();
    let app = AppServer::uwsgi(env.dir(), "echo.py");
    let (_server, port) = start(&env, &app.http_to());

    let (get, cert, chunked) = wsgi_suite(&env, port, "uWSGI");
    // uwsgi needs a length: the chunked body was buffered and sent with CONTENT_LENGTH.
    chunked.expect("CONTENT_LENGTH", "300000");
    eprintln!(
        "uWSGI: chunked POST environ: CONTENT_LENGTH={:?} HTTP_TRANSFER_ENCODING={:?}",
        chunked.get("CONTENT_LENGTH"),
        chunked.get("HTTP_TRANSFER_ENCODING")
    );
    get.expect("HTTPS", "on");
    get.expect("UWSGI_SCHEME", "https");
    get.expect("REQUEST_URI", ODD_PATH);
    get.expect("SERVER_NAME", "localhost");
    get.expect("SERVER_PORT", &port.to_string());
    get.expect("REMOTE_ADDR", "127.0.0.1");
    get.expect("UWSGI_ROUTER", "http");
    get.expect("HTTP_X_MULTI", "one, two");
    get.expect("HTTP_COOKIE", "a=1; b=2");
    assert!(
        get.get("REMOTE_PORT")
            .and_then(|p| p.parse::<u16>().ok())
            .is_some(),
        "REMOTE_PORT: {:#?}",
        get.sorted()
    );
    assert!(
        get.get("HTTPS_DN").is_none(),
        "no client cert, no HTTPS_DN: {:#?}",
        get.sorted()
    );
    assert!(
        get.get("HTTPS_CC").is_none(),
        "no client cert, no HTTPS_CC: {:#?}",
        get.sorted()
    );

    cert.expect("HTTPS", "on");
    cert.expect("HTTPS_DN", CLIENT_DN);
    let pem = std::fs::read_to_string(&env.certs.client_crt).expect("read client.crt");
    assert_eq!(
        cert.get("HTTPS_CC").map(str::trim),
        Some(pem.trim()),
        "HTTPS_CC should be the client certificate's PEM (https-export-cert = true): {:#?}",
        cert.sorted()
    );
    let der = openssl::x509::X509::from_pem(pem.as_bytes())
        .and_then(|c| c.to_der())
        .expect("client cert DER");
    cert.expect("HTTPS_CLIENT_CERTIFICATE_SHA256", &common::sha256_hex(&der));
}

// ------------------------------------------------------------ acceptance 2: gunicorn

/// gunicorn (`-k gthread --threads 4 --keep-alive 10`) behind `http-to = "http://…"`
/// serves the same app with the X-Forwarded-* and X-SSL-Client-* headers, and backend
/// connections are reused: 30 requests on one client connection come over fewer backend
/// connections (distinct REMOTE_PORTs seen by gunicorn).
#[test]
fn gunicorn_behind_http_backend_with_reused_connections() {
    let _wd = watchdog(
        "gunicorn_behind_http_backend_with_reused_connections",
        LIMIT,
    );
    let env = TestEnv::new();
    let app = AppServer::gunicorn(env.dir(), "echo", free_port());
    let (_server, port) = start(&env, &app.http_to());

    let (get, cert, _) = wsgi_suite(&env, port, "gunicorn");
    get.expect("HTTP_X_FORWARDED_FOR", "127.0.0.1");
    get.expect("HTTP_X_FORWARDED_PROTO", "https");
    get.expect("HTTP_X_FORWARDED_HOST", &format!("localhost:{port}"));
    get.expect("HTTP_X_SSL_CLIENT_VERIFY", "NONE");
    assert!(
        get.get("HTTP_X_SSL_CLIENT_DN").is_none(),
        "{:#?}",
        get.sorted()
    );
    let multi = get.get("HTTP_X_MULTI").unwrap_or("");
    assert!(
        multi.contains("one") && multi.contains("two"),
        "both X-Multi values should reach gunicorn: {multi:?}"
    );
    let cookie = get.get("HTTP_COOKIE").unwrap_or("");
    assert!(
        cookie.contains("a=1") && cookie.contains("b=2"),
        "both cookies should reach gunicorn: {cookie:?}"
    );
    cert.expect("HTTP_X_SSL_CLIENT_VERIFY", "SUCCESS");
    cert.expect("HTTP_X_SSL_CLIENT_DN", CLIENT_DN);

    // Reuse: 30 sequential requests on one client keep-alive connection.
    let mut c = RawTls::connect(port, &env.certs).expect("TLS connect");
    let mut ports = BTreeSet::new();
    let mut pids = BTreeSet::new();
    for i in 0..30 {
        let r = c
            .get(&format!("/reuse-{i}"))
            .unwrap_or_else(|e| panic!("request {i} on the kept-alive connection: {e}"));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let e = EchoEnv::parse(&r.text()).unwrap_or_else(|e| panic!("request {i}: {e}: {r:?}"));
        e.expect("PATH_INFO", &format!("/reuse-{i}"));
        ports.insert(e.get("REMOTE_PORT").unwrap_or("?").to_string());
        pids.insert(e.get("APP_PID").unwrap_or("?").to_string());
    }
    eprintln!(
        "30 requests reached gunicorn over {} backend connection(s): REMOTE_PORTs {ports:?}",
        ports.len()
    );
    assert!(
        ports.len() < 30,
        "backend connections should be reused: 30 requests came over {} connections {ports:?}",
        ports.len()
    );
    assert!(
        ports.len() <= 2,
        "one worker keeps one pool of idle backend connections: 30 sequential requests over \
         {} backend connections {ports:?} is hardly reuse",
        ports.len()
    );
}

// ------------------------------------------------------------ headers toward HTTP backends

/// What a test-code HTTP/1.1 backend receives: the client's head minus hop-by-hop headers
/// (including those named in Connection), with X-Forwarded-For/Proto/Host and
/// X-SSL-Client-Verify/DN set by us, replacing the client's own. Over `http+unix:`.
#[test]
fn http_backend_receives_forwarded_and_client_cert_headers() {
    let _wd = watchdog(
        "http_backend_receives_forwarded_and_client_cert_headers",
        LIMIT,
    );
    let env = TestEnv::new();
    let peer = Peer::http_unix(&env.path("http-peer.sock"));
    let (_server, port) = start(&env, &peer.http_to());
    let spoofed = |path: &str| {
        format!(
            "POST {path}?x=%2F HTTP/1.1\r\n\
             Host: localhost:{port}\r\n\
             X-Forwarded-For: 6.6.6.6\r\n\
             X-Forwarded-Proto: http\r\n\
             X-Forwarded-Host: evil.example\r\n\
             X-SSL-Client-Verify: SUCCESS\r\n\
             X-SSL-Client-DN: /CN=admin\r\n\
             Connection: keep-alive, X-Hop\r\n\
             X-Hop: secret\r\n\
             Keep-Alive: timeout=99\r\n\
             Proxy-Connection: keep-alive\r\n\
             TE: trailers\r\n\
             Trailer: X-T\r\n\
             X-App: kept\r\n\
             X-App: twice\r\n\
             Content-Length: 4\r\n\
             \r\n\
             ping"
        )
    };
    let hop_by_hop = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "x-hop",
    ];

    for (path, client) in [("/no-cert", None), ("/with-cert", Some(env.certs.client()))] {
        let mut c = RawTls::connect_opts(port, &env.certs, client).expect("TLS connect");
        c.send(spoofed(path).as_bytes()).expect("send");
        let r = c.response().expect("answer");
        assert_eq!(r.status, 200, "{path}: {r:?}");
        let req = peer
            .request_for(path)
            .unwrap_or_else(|| panic!("the backend saw no {path}: {:?}", peer.errors()));
        let head = &req.raw_head;
        assert!(
            head.starts_with(&format!("POST {path}?x=%2F HTTP/1.1\r\n")),
            "request line passed unchanged:\n{head}"
        );
        assert_eq!(
            req.all("host"),
            vec![format!("localhost:{port}").as_str()],
            "{head}"
        );
        assert_eq!(
            req.all("x-forwarded-for"),
            vec!["127.0.0.1"],
            "client's XFF replaced:\n{head}"
        );
        assert_eq!(req.all("x-forwarded-proto"), vec!["https"], "{head}");
        assert_eq!(
            req.all("x-forwarded-host"),
            vec![format!("localhost:{port}").as_str()],
            "{head}"
        );
        for h in hop_by_hop {
            assert!(
                req.get(h).is_none(),
                "hop-by-hop header {h} reached the backend:\n{head}"
            );
        }
        assert_eq!(
            req.all("x-app"),
            vec!["kept", "twice"],
            "end-to-end headers kept:\n{head}"
        );
        assert_eq!(req.all("content-length"), vec!["4"], "{head}");
        assert_eq!(req.body_len, 4);
        match client {
            None => {
                assert_eq!(req.all("x-ssl-client-verify"), vec!["NONE"], "{head}");
                assert!(
                    req.get("x-ssl-client-dn").is_none(),
                    "spoofed DN passed:\n{head}"
                );
            }
            Some(_) => {
                assert_eq!(req.all("x-ssl-client-verify"), vec!["SUCCESS"], "{head}");
                assert_eq!(req.all("x-ssl-client-dn"), vec![CLIENT_DN], "{head}");
            }
        }
    }
    assert!(
        peer.errors().is_empty(),
        "backend errors: {:?}",
        peer.errors()
    );
}

/// Client-sent `X-SSL-*` and `X-Forwarded-*` headers are dropped, not only the ones the
/// proxy sets itself: a backend must be able to trust every header of those families
/// (e.g. a spoofed X-SSL-Client-Cert, X-Forwarded-Port).
#[test]
fn http_backend_never_sees_client_sent_x_ssl_or_x_forwarded_headers() {
    let _wd = watchdog(
        "http_backend_never_sees_client_sent_x_ssl_or_x_forwarded_headers",
        LIMIT,
    );
    let env = TestEnv::new();
    let peer = Peer::http_tcp();
    let (_server, port) = start(&env, &peer.http_to());
    let mut c = RawTls::connect(port, &env.certs).expect("TLS connect");
    c.send(
        format!(
            "GET /spoof HTTP/1.1\r\nHost: localhost:{port}\r\n\
             X-SSL-Client-Cert: -----BEGIN CERTIFICATE-----forged\r\n\
             X-SSL-Client-S-DN: /CN=admin\r\n\
             X-Forwarded-Port: 80\r\n\
             X-Forwarded-Server: evil\r\n\r\n"
        )
        .as_bytes(),
    )
    .expect("send");
    assert_eq!(c.response().expect("answer").status, 200);
    let req = peer.request_for("/spoof").expect("backend got /spoof");
    let leaked: Vec<&(String, String)> = req
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase();
            (k.starts_with("x-ssl-") && k != "x-ssl-client-verify")
                || (k.starts_with("x-forwarded-")
                    && !["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
                        .contains(&k.as_str()))
        })
        .collect();
    assert!(
        leaked.is_empty(),
        "client-sent headers of the X-SSL-*/X-Forwarded-* families reached the backend: \
         {leaked:?}\nfull head:\n{}",
        req.raw_head
    );
}

/// A chunked upload reaches a uwsgi backend de-chunked, with CONTENT_LENGTH (SPEC §5: the
/// proxy buffers it). The environ must then not also say `HTTP_TRANSFER_ENCODING: chunked`:
/// WSGI frameworks trust that header over CONTENT_LENGTH (werkzeug's
/// `get_content_length` returns None for it, and without `wsgi.input_terminated`
/// `get_input_stream` then hands the app an empty body), so a Flask app behind
/// uwsgi-master + uWSGI would see every chunked upload as empty.
#[test]
fn dechunked_upload_to_uwsgi_does_not_claim_chunked() {
    let _wd = watchdog("dechunked_upload_to_uwsgi_does_not_claim_chunked", LIMIT);
    let env = TestEnv::new();
    let app = AppServer::uwsgi(env.dir(), "echo.py");
    let (_server, port) = start(&env, &app.http_to());
    let (file, sha) = random_file(&env, "chunked.bin", 10_000);
    let out = post_file(&env, port, "/chunked-upload", &file, true);
    let e = echo_env(&out, "uWSGI: chunked POST");
    e.expect("BODY_SHA256", &sha);
    e.expect("CONTENT_LENGTH", "10000");
    assert!(
        e.get("HTTP_TRANSFER_ENCODING").is_none(),
        "the body was de-chunked and CONTENT_LENGTH set, yet the app is told \
         HTTP_TRANSFER_ENCODING={:?} (werkzeug/Flask then read an empty body)",
        e.get("HTTP_TRANSFER_ENCODING")
    );
}
