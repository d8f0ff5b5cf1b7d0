//! uWSGI compatibility (SPEC §2, §4.3, §6; issue 6): the commands and ini files of uWSGI's
//! HTTPS documentation run with the program name changed, unsupported uWSGI options are
//! refused all at once, and `http-to-https` redirects. Free high ports stand in for 443 and
//! 8443, test-made certificates for foobar.*.

mod common;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::certs::CLIENT_DN;
use common::compat::{foobar, http_raw, nobody, UwsgiApp};
use common::{curl, free_port, proc_status, wait_until, watchdog, Curl, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(120);

/// Start the master with `args` in the env's folder; do not wait.
fn spawn(env: &TestEnv, args: &[&str]) -> Server {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    Server::spawn_args(env.dir(), &args, env.path("app.ini"))
}

/// Start the master with `args` and wait until `port` answers TLS.
fn start(env: &TestEnv, args: &[&str], port: u16) -> Server {
    let mut server = spawn(env, args);
    server.wait_ready(port, None);
    server
}

/// The `[uwsgi]` block of uWSGI's HTTPS documentation, on 127.0.0.1:`port`. uid and gid
/// are nobody/nogroup when we are root (as `roberto` in the documentation); otherwise
/// they are left out, saying so.
fn doc_ini(test: &str, port: u16, https: &str, http_to: &Path) -> String {
    let ids = if nobody().is_some() {
        "uid = nobody\ngid = nogroup\n"
    } else {
        eprintln!("NOTE {test}: not root, so the ini runs without uid/gid");
        ""
    };
    format!(
        "[uwsgi]\nshared-socket = 127.0.0.1:{port}\n{ids}https = {https}\nhttp-to = {}\n",
        http_to.display()
    )
}

/// Acceptance 1: `--master --https 127.0.0.1:P,foobar.crt,foobar.key` serves HTTPS (the
/// built-in responder: no backend is named).
#[test]
fn seed_command_master_https_serves() {
    let _wd = watchdog("seed_command_master_https_serves", LIMIT);
    let env = TestEnv::new();
    foobar(&env, None);
    let port = free_port();
    let https = format!("127.0.0.1:{port},foobar.crt,foobar.key");
    let _server = start(&env, &["--master", "--https", &https], port);
    let out = curl(&env.certs, port, "/hello?x=1").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(out.text().contains("built-in responder"), "{out:?}");
    assert!(out.text().contains("GET /hello?x=1 HTTP/1.1"), "{out:?}");
}

/// Acceptance 2: `--shared-socket 127.0.0.1:P --uid nobody --gid nogroup --https
/// =0,foobar.crt,foobar.key` serves, with workers running as nobody.
#[test]
fn seed_command_shared_socket_drops_to_nobody() {
    let Some((uid, gid)) = nobody() else {
        eprintln!(
            "SKIP seed_command_shared_socket_drops_to_nobody: needs root to switch to nobody"
        );
        return;
    };
    let _wd = watchdog("seed_command_shared_socket_drops_to_nobody", LIMIT);
    let env = TestEnv::new();
    foobar(&env, Some(gid));
    let port = free_port();
    let socket = format!("127.0.0.1:{port}");
    let server = start(
        &env,
        &[
            "--shared-socket",
            &socket,
            "--uid",
            "nobody",
            "--gid",
            "nogroup",
            "--https",
            "=0,foobar.crt,foobar.key",
        ],
        port,
    );
    let out = curl(&env.certs, port, "/").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(out.text().contains("built-in responder"), "{out:?}");
    let mut workers = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            workers = server.workers();
            !workers.is_empty()
        }),
        "no workers"
    );
    for pid in workers {
        let st = proc_status(pid).expect("worker status");
        assert_eq!(st.uid, [uid; 4], "worker {pid}: {st:?}");
        assert_eq!(st.gid, [gid; 4], "worker {pid}: {st:?}");
        assert!(
            !st.groups.contains(&0),
            "worker {pid} keeps root's group: {st:?}"
        );
    }
}

/// Acceptance 3: the documentation's ini (shared-socket, uid, gid,
/// `https = =0,foobar.crt,foobar.key,HIGH`, `http-to = <unix socket>`) serves through a
/// real uWSGI application server.
#[test]
fn documentation_ini_serves_through_uwsgi_backend() {
    let test = "documentation_ini_serves_through_uwsgi_backend";
    let _wd = watchdog(test, LIMIT);
    let env = TestEnv::new();
    foobar(&env, nobody().map(|(_, gid)| gid));
    let Some(app) = UwsgiApp::start(env.dir()) else {
        eprintln!("SKIP {test}: no uwsgi binary installed");
        return;
    };
    let port = free_port();
    let ini = doc_ini(test, port, "=0,foobar.crt,foobar.key,HIGH", &app.socket);
    std::fs::write(env.path("app.ini"), ini).expect("write app.ini");
    let _server = start(&env, &["--ini", "app.ini"], port);
    // TLS 1.2, where the HIGH cipher list applies.
    let out = curl(&env.certs, port, "/docs?page=1")
        .arg("--tlsv1.2")
        .arg("--tls-max")
        .arg("1.2")
        .run();
    assert_eq!(out.status, Some(200), "{out:?}");
    let text = out.text();
    assert!(text.starts_with("uwsgi-app\n"), "{text}");
    assert!(text.contains("REQUEST_URI=/docs?page=1\n"), "{text}");
    assert!(text.contains("HTTPS=on\n"), "{text}");
    assert!(
        text.contains("HTTPS_DN=\n"),
        "no client certificate: {text}"
    );
}

/// Acceptance 4: `,HIGH,!ca.crt` requires a client certificate; `,HIGH,ca.crt` lets a
/// client without one through and passes the subject of one that has one as `HTTPS_DN`.
#[test]
fn documentation_ini_client_certificates() {
    let test = "documentation_ini_client_certificates";
    let _wd = watchdog(test, LIMIT);
    let env = TestEnv::new();
    foobar(&env, nobody().map(|(_, gid)| gid));
    let Some(app) = UwsgiApp::start(env.dir()) else {
        eprintln!("SKIP {test}: no uwsgi binary installed");
        return;
    };
    let with_dn = format!("HTTPS_DN={CLIENT_DN}\n");

    // Mandatory.
    let port = free_port();
    let ini = doc_ini(
        test,
        port,
        "=0,foobar.crt,foobar.key,HIGH,!ca.crt",
        &app.socket,
    );
    std::fs::write(env.path("required.ini"), ini).expect("write required.ini");
    let server = start(&env, &["--ini", "required.ini"], port);
    let out = curl(&env.certs, port, "/").run();
    assert_eq!(out.status, None, "no certificate must not pass: {out:?}");
    let out = curl(&env.certs, port, "/")
        .client_cert(env.certs.client())
        .run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(out.text().contains(&with_dn), "{out:?}");
    let out = curl(&env.certs, port, "/")
        .client_cert(env.certs.other_client())
        .run();
    assert_eq!(out.status, None, "a certificate of another CA: {out:?}");
    drop(server);

    // Optional.
    let port = free_port();
    let ini = doc_ini(
        test,
        port,
        "=0,foobar.crt,foobar.key,HIGH,ca.crt",
        &app.socket,
    );
    std::fs::write(env.path("optional.ini"), ini).expect("write optional.ini");
    let _server = start(&env, &["--ini", "optional.ini"], port);
    let out = curl(&env.certs, port, "/").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(out.text().contains("HTTPS_DN=\n"), "{out:?}");
    let out = curl(&env.certs, port, "/")
        .client_cert(env.certs.client())
        .run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(out.text().contains(&with_dn), "{out:?}");
}

/// Acceptance 5: an ini with `wsgi-file` and `harakiri-verbose` fails, naming both, and the
/// unsupported flags in the same error.
#[test]
fn unsupported_uwsgi_options_are_all_named() {
    let _wd = watchdog("unsupported_uwsgi_options_are_all_named", LIMIT);
    let env = TestEnv::new();
    foobar(&env, None);
    let port = free_port();
    let ini = format!(
        "[uwsgi]\nmaster = true\nhttps = 127.0.0.1:{port},foobar.crt,foobar.key\n\
         wsgi-file = app.py\nharakiri-verbose = true\nprocesses = 1\n"
    );
    std::fs::write(env.path("app.ini"), ini).expect("write app.ini");
    let mut server = spawn(&env, &["--ini", "app.ini", "--vacuum", "--no-such-option"]);
    let status = server.expect_exit(Duration::from_secs(30));
    assert!(!status.success(), "must fail: {status:?}");
    let log = server.log();
    for needle in [
        "wsgi-file (line 4)",
        "uWSGI's Python application server",
        "harakiri-verbose (line 5)",
        "--vacuum",
        "--no-such-option: unknown option",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
        "nothing may be bound"
    );
}

/// Acceptance 6: `http-to-https` answers 301 to the https URL of the same host and target,
/// on the port of the https listener; a request without a usable Host gets 400, one that
/// never ends its head is dropped after the head timeout, and curl follows the redirect.
#[test]
fn http_to_https_redirects() {
    let _wd = watchdog("http_to_https_redirects", LIMIT);
    let env = TestEnv::new();
    foobar(&env, None);
    let port = free_port();
    let plain = free_port();
    let https = format!("127.0.0.1:{port},foobar.crt,foobar.key");
    let redirect = format!("127.0.0.1:{plain}");
    let _server = start(
        &env,
        &[
            "--https",
            &https,
            "--http-to-https",
            &redirect,
            "--processes=1",
            "--threads=4",
            "--http-headers-timeout=1",
        ],
        port,
    );

    let req = format!("GET /a/b?c=d HTTP/1.1\r\nHost: example.com:{plain}\r\n\r\n");
    let resp = http_raw(plain, req.as_bytes()).expect("redirect answer");
    assert_eq!(resp.status, 301, "{resp:?}");
    let expected = format!("https://example.com:{port}/a/b?c=d");
    assert_eq!(resp.header("location"), Some(expected.as_str()), "{resp:?}");
    assert_eq!(resp.header("connection"), Some("close"), "{resp:?}");

    let resp = http_raw(plain, b"HEAD / HTTP/1.1\r\nHost: [::1]\r\n\r\n").expect("HEAD");
    assert_eq!(resp.status, 301, "{resp:?}");
    let expected = format!("https://[::1]:{port}/");
    assert_eq!(resp.header("location"), Some(expected.as_str()), "{resp:?}");

    let resp = http_raw(plain, b"GET / HTTP/1.0\r\n\r\n").expect("no Host");
    assert_eq!(resp.status, 400, "{resp:?}");
    let resp = http_raw(plain, b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n").expect("bad Host");
    assert_eq!(resp.status, 400, "{resp:?}");

    // A head that never ends does not hold a thread past http-headers-timeout.
    let mut slow = TcpStream::connect((Ipv4Addr::LOCALHOST, plain)).expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .expect("write");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "held for {:?}",
        started.elapsed()
    );
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // curl follows the redirect to the TLS listener (the certificate names localhost).
    let out = Curl::new(&format!("http://localhost:{plain}/followed"))
        .arg("-L")
        .arg("--cacert")
        .arg(&env.certs.ca_crt)
        .arg("--resolve")
        .arg(format!("localhost:{plain}:127.0.0.1"))
        .arg("--resolve")
        .arg(format!("localhost:{port}:127.0.0.1"))
        .run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(out.text().contains("GET /followed HTTP/1.1"), "{out:?}");
}

/// Flags override the files (a flag replaces the key it names), and `--config` and `--ini`
/// mix, later files winning.
#[test]
fn flags_override_files() {
    let _wd = watchdog("flags_override_files", LIMIT);
    let env = TestEnv::new();
    foobar(&env, None);
    let port = free_port();
    let unused = free_port();
    // Both files name a socket nobody may bind: the flag replaces https, so only `port`
    // is served.
    std::fs::write(
        env.path("base.toml"),
        format!(
            "processes = 3\nthreads = 16\nhttps = \"127.0.0.1:{unused},missing.crt,missing.key\"\n"
        ),
    )
    .expect("write base.toml");
    std::fs::write(
        env.path("app.ini"),
        format!("[uwsgi]\nhttps = 127.0.0.1:{unused},missing.crt,missing.key\nthreads = 2\n"),
    )
    .expect("write app.ini");
    let flag = format!("127.0.0.1:{port},foobar.crt,foobar.key");
    let server = start(
        &env,
        &[
            "--config",
            "base.toml",
            "--ini",
            "app.ini",
            "--https",
            &flag,
            "--workers",
            "1",
        ],
        port,
    );
    let mut workers = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            workers = server.workers();
            workers.len() == 1
        }),
        "--workers 1 must replace processes = 3: {workers:?}"
    );
    // threads = 2 from the ini replaced the TOML's 16 (plus the worker's main thread).
    let threads = std::fs::read_dir(format!("/proc/{}/task", workers[0]))
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        threads <= 4,
        "{threads} threads: the ini's threads = 2 must win"
    );
    let out = curl(&env.certs, port, "/").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(
        TcpStream::connect((Ipv4Addr::LOCALHOST, unused)).is_err(),
        "the files' https socket must not be bound"
    );
}
