//! TLS in depth against the real binary (issue 5; SPEC §3 TLS material, §4.1, §7): protocol
//! versions and ciphers (checked with `openssl s_client` and `sslscan`), SNI, session
//! resumption across workers and reloads, the PROXY protocol behind a real HAProxy,
//! `master-as-root` with a root-only key, OCSP stapling, file mode warnings.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod};

use common::client::read_response;
use common::compat::{is_root, nobody};
use common::procs::{proc_status, wait_for, wait_until};
use common::server::tls_probe;
use common::tls::{
    args, s_client, s_client_cmd, sslscan, sslscan_ciphers, sslscan_protocols, wait_tcp, Ca,
    KeyKind, Proc, SClientOut, GET_10,
};
use common::{free_port, toml_str, var, watchdog, Backend, Response, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(240);
const T: Duration = Duration::from_secs(30);

/// A `[[https]]` table on 127.0.0.1:port with `server.crt`/`server.key` and `extra` lines.
fn https_table(port: u16, extra: &str) -> String {
    format!(
        "[[https]]\nsocket = \"127.0.0.1:{port}\"\ncert = \"server.crt\"\nkey = \"server.key\"\n{extra}\n"
    )
}

fn path_arg(p: &Path) -> &OsStr {
    p.as_os_str()
}

// ---------------------------------------------------------------- 1. versions and ciphers

#[test]
fn defaults_refuse_tls_1_0_and_1_1_and_weak_ciphers() {
    let _w = watchdog("defaults_refuse_tls_1_0_and_1_1_and_weak_ciphers", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let _server = Server::start(env.dir(), &common::config(port, None, ""), port);

    // A reference server that allows the old versions, so that the client side of the
    // check is known to work.
    let ref_port = free_port();
    let _reference = Proc::spawn(
        Command::new("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(format!("127.0.0.1:{ref_port}"))
            .arg("-cert")
            .arg(&env.certs.server_crt)
            .arg("-key")
            .arg(&env.certs.server_key)
            .arg("-www")
            .arg("-cipher")
            .arg("DEFAULT@SECLEVEL=0"),
    );
    assert!(wait_tcp(ref_port, T), "openssl s_server did not start");

    for (flag, proto) in [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")] {
        let a = args(&[
            "-servername",
            "localhost",
            flag,
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ]);
        let reference = s_client(ref_port, &a, b"", T);
        assert!(
            reference.handshake_ok() && reference.protocol() == proto,
            "the reference s_server should accept {flag}: {reference:#?}"
        );
        let ours = s_client(port, &a, b"", T);
        assert!(
            !ours.handshake_ok() && ours.code != Some(0),
            "{flag} must fail against the defaults: {ours:#?}"
        );
    }
    for (flag, proto) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let ours = s_client(port, &args(&["-servername", "localhost", flag]), b"", T);
        assert!(
            ours.handshake_ok() && ours.protocol() == proto && ours.code == Some(0),
            "{flag} must succeed: {ours:#?}"
        );
    }

    let scan = sslscan(port, Duration::from_secs(180));
    let protocols = sslscan_protocols(&scan);
    for (proto, enabled) in [
        ("SSLv3", false),
        ("TLSv1.0", false),
        ("TLSv1.1", false),
        ("TLSv1.2", true),
        ("TLSv1.3", true),
    ] {
        assert!(
            protocols.contains(&(proto.to_string(), enabled)),
            "sslscan: {proto} should be {}; got {protocols:?}\n{scan}",
            if enabled { "enabled" } else { "disabled" }
        );
    }
    let ciphers = sslscan_ciphers(&scan);
    assert!(!ciphers.is_empty(), "sslscan listed no cipher:\n{scan}");
    let weak: Vec<_> = ciphers.iter().filter(|(_, bits, _)| *bits < 128).collect();
    assert!(weak.is_empty(), "ciphers under 128 bits: {weak:?}\n{scan}");
    assert!(
        ciphers
            .iter()
            .all(|(p, _, _)| p == "TLSv1.2" || p == "TLSv1.3"),
        "{ciphers:?}"
    );
}

#[test]
fn min_version_1_0_is_listed_by_sslscan() {
    let _w = watchdog("min_version_1_0_is_listed_by_sslscan", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let config = format!(
        "processes = 1\nthreads = 8\n{}",
        https_table(port, "min-version = \"1.0\"")
    );
    let _server = Server::start(env.dir(), &config, port);
    let a = args(&[
        "-servername",
        "localhost",
        "-tls1",
        "-cipher",
        "DEFAULT@SECLEVEL=0",
    ]);
    let old = s_client(port, &a, b"", T);
    assert!(
        old.handshake_ok() && old.protocol() == "TLSv1",
        "min-version 1.0 must accept TLS 1.0: {old:#?}"
    );
    let scan = sslscan(port, Duration::from_secs(180));
    assert!(
        sslscan_protocols(&scan).contains(&("TLSv1.0".to_string(), true)),
        "sslscan should list TLS 1.0:\n{scan}"
    );
    let weak: Vec<_> = sslscan_ciphers(&scan)
        .into_iter()
        .filter(|(_, bits, _)| *bits < 128)
        .collect();
    assert!(weak.is_empty(), "{weak:?}");
}

#[test]
fn ssl_option_names_switch_openssl_options() {
    let _w = watchdog("ssl_option_names_switch_openssl_options", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let config = common::config(port, None, "ssl-option = [\"no-tlsv1.3\", \"no-tickets\"]");
    let _server = Server::start(env.dir(), &config, port);
    let a13 = s_client(
        port,
        &args(&["-servername", "localhost", "-tls1_3"]),
        b"",
        T,
    );
    assert!(!a13.handshake_ok(), "no-tlsv1.3: {a13:#?}");
    let a12 = s_client(
        port,
        &args(&["-servername", "localhost", "-tls1_2"]),
        b"",
        T,
    );
    assert!(a12.handshake_ok(), "{a12:#?}");
    assert!(
        !a12.out.contains("TLS session ticket lifetime hint"),
        "no-tickets: no ticket expected: {a12:#?}"
    );

    // An unknown name stops the start, naming it.
    let env2 = TestEnv::new();
    let port2 = free_port();
    let mut bad = Server::spawn(
        env2.dir(),
        &common::config(port2, None, "ssl-option = \"no-such-switch\""),
    );
    let st = bad.expect_exit(T);
    assert!(!st.success());
    let log = bad.log();
    assert!(
        log.contains("no-such-switch") && log.contains("no-tickets"),
        "{log}"
    );
}

// ---------------------------------------------------------------- 2. SNI

#[test]
fn sni_names_wildcards_key_types_and_sni_dir() {
    let _w = watchdog("sni_names_wildcards_key_types_and_sni_dir", LIMIT);
    let env = TestEnv::new();
    let d = env.dir();
    let ca = Ca::new(d, "sni-ca", "SNI CA");
    ca.issue(d, "api", "api", &["api.example.com"], KeyKind::Ec);
    ca.issue(d, "www-ec", "www-ecdsa", &["www.example.com"], KeyKind::Ec);
    ca.issue(d, "www-rsa", "www-rsa", &["www.example.com"], KeyKind::Rsa);
    ca.issue(d, "apps", "apps", &["*.apps.example.com"], KeyKind::Ec);
    let sni_dir = d.join("sni.d");
    fs::create_dir(&sni_dir).expect("mkdir sni.d");
    ca.issue(
        &sni_dir,
        "shop.example.org",
        "shop-dir",
        &["shop.example.org"],
        KeyKind::Ec,
    );
    let port = free_port();
    let config = format!(
        "processes = 1\nthreads = 8\n{}",
        https_table(
            port,
            r#"sni-dir = "sni.d"
sni = [
  { name = "api.example.com", cert = "api.crt", key = "api.key" },
  { name = "www.example.com", cert = ["www-ec.crt", "www-rsa.crt"], key = ["www-ec.key", "www-rsa.key"] },
  { name = "*.apps.example.com", cert = "apps.crt", key = "apps.key" },
]"#
        )
    );
    let mut server = Server::start(d, &config, port);

    let org = |name: Option<&str>, extra: &[&str]| -> (Option<String>, SClientOut) {
        let mut a = match name {
            Some(n) => vec!["-servername", n],
            None => vec!["-noservername"],
        };
        a.extend_from_slice(extra);
        let out = s_client(port, &args(&a), b"", T);
        (out.subject_field("O"), out)
    };
    let check = |name: Option<&str>, extra: &[&str], want: &str| {
        let (got, out) = org(name, extra);
        assert_eq!(got.as_deref(), Some(want), "{name:?} {extra:?}: {out:#?}");
    };
    check(Some("api.example.com"), &[], "api");
    check(Some("x.apps.example.com"), &[], "apps");
    check(Some("shop.example.org"), &[], "shop-dir");
    // Unknown names, a name two labels under the wildcard, and no name: the default.
    check(Some("unknown.example.net"), &[], "Test");
    check(Some("a.b.apps.example.com"), &[], "Test");
    check(None, &[], "Test");
    // One name, two key types: the client's signature algorithms choose.
    check(
        Some("www.example.com"),
        &["-sigalgs", "ECDSA+SHA256"],
        "www-ecdsa",
    );
    check(
        Some("www.example.com"),
        &["-sigalgs", "RSA-PSS+SHA256:RSA+SHA256"],
        "www-rsa",
    );
    check(
        Some("www.example.com"),
        &["-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256"],
        "www-rsa",
    );
    // The chain verifies against the SNI CA for its name.
    let verified = s_client(
        port,
        &[
            OsStr::new("-servername"),
            OsStr::new("api.example.com"),
            OsStr::new("-verify_hostname"),
            OsStr::new("api.example.com"),
            OsStr::new("-verify_return_error"),
            OsStr::new("-CAfile"),
            path_arg(&ca.crt),
        ],
        b"",
        T,
    );
    assert!(
        verified.out.contains("Verify return code: 0 (ok)"),
        "{verified:#?}"
    );

    // sni-dir is read again on reload.
    ca.issue(
        &sni_dir,
        "blog.example.org",
        "blog-dir",
        &["blog.example.org"],
        KeyKind::Ec,
    );
    server.signal(libc::SIGHUP);
    let seen = wait_for(T, || {
        org(Some("blog.example.org"), &[])
            .0
            .filter(|o| o == "blog-dir")
    });
    if seen.is_none() {
        server.dump_log();
    }
    assert!(seen.is_some(), "blog.example.org not served after SIGHUP");
    check(Some("api.example.com"), &[], "api");
}

// ---------------------------------------------------------------- 3. resumption

/// s_client arguments for a resumption check: SNI, the test client certificate, and the
/// session file in or out.
fn resume_args<'a>(env: &'a TestEnv, sess: (&'a str, &'a Path)) -> Vec<&'a OsStr> {
    vec![
        OsStr::new("-servername"),
        OsStr::new("localhost"),
        OsStr::new("-cert"),
        path_arg(&env.certs.client_crt),
        OsStr::new("-key"),
        path_arg(&env.certs.client_key),
        OsStr::new(sess.0),
        path_arg(sess.1),
        OsStr::new("-ign_eof"),
    ]
}

/// One resumed request: (worker pid, s_client's view, the page's view).
fn resumed_request(port: u16, env: &TestEnv, sess: &Path) -> (i32, SClientOut) {
    let out = s_client(port, &resume_args(env, ("-sess_in", sess)), GET_10, T);
    let pid = out
        .page_value("worker-pid")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no worker-pid in the answer: {out:#?}"));
    (pid, out)
}

/// `rounds` rounds of `workers` s_client connections resumed from `sess`, each round held
/// open together (a partial request keeps each worker's only thread busy), so that every
/// connection of a round is answered by another worker. Returns every (pid, output).
fn resume_on_every_worker(
    port: u16,
    env: &TestEnv,
    sess: &Path,
    workers: usize,
    rounds: usize,
) -> Vec<(i32, SClientOut)> {
    let mut all = Vec::new();
    for _ in 0..rounds {
        let mut held = Vec::new();
        for _ in 0..workers {
            let mut p = Proc::spawn(&mut s_client_cmd(
                port,
                &resume_args(env, ("-sess_in", sess)),
            ));
            assert!(p.wait_for("Cipher is", T), "no handshake: {}", p.describe());
            // The head without its blank line: the worker's thread waits for the rest.
            p.write(b"GET / HTTP/1.0\r\nHost: localhost\r\n");
            held.push(p);
        }
        for p in &mut held {
            p.write(b"\r\n");
        }
        for mut p in held {
            assert!(p.wait_exit(T).is_some(), "no answer: {}", p.describe());
            let out = SClientOut {
                code: Some(0),
                out: p.output(),
            };
            let pid = out
                .page_value("worker-pid")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no worker-pid: {out:#?}"));
            all.push((pid, out));
        }
    }
    all
}

fn assert_resumed(out: &SClientOut, what: &str) {
    assert!(
        out.reused() && out.page_value("session-reused").as_deref() == Some("yes"),
        "{what}: expected a resumed session: {out:#?}"
    );
    assert_eq!(
        out.page_value("client-cert").as_deref(),
        Some(common::certs::CLIENT_DN),
        "{what}: the resumed session keeps the client certificate: {out:#?}"
    );
}

/// Wait until the master has `n` workers, none of them in `old`.
fn wait_new_generation(server: &Server, old: &[i32], n: usize) -> Vec<i32> {
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(60), || {
        last = server.workers();
        last.len() == n && last.iter().all(|p| !old.contains(p))
    });
    assert!(
        ok,
        "no new generation of {n} workers (old {old:?}, now {last:?})"
    );
    last
}

#[test]
fn sessions_resume_across_workers_and_reloads_with_ticket_key_file() {
    let _w = watchdog(
        "sessions_resume_across_workers_and_reloads_with_ticket_key_file",
        LIMIT,
    );
    let env = TestEnv::new();
    let mut key = [0u8; 80];
    openssl::rand::rand_bytes(&mut key).expect("rand");
    let key_path = env.path("ticket.key");
    fs::write(&key_path, key).expect("write ticket.key");
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600)).expect("chmod");
    let port = free_port();
    // Client certificates requested (client-ca, not required): resumption needs the
    // session-id context then.
    let config = format!(
        "processes = 4\nthreads = 1\nticket-key-file = \"ticket.key\"\n{}",
        https_table(port, "client-ca = \"ca.crt\"")
    );
    let server = Server::start(env.dir(), &config, port);
    let first_gen = server.wait_workers(4, T);

    let sess = env.path("session.pem");
    let first = s_client(port, &resume_args(&env, ("-sess_out", &sess)), GET_10, T);
    assert!(
        first.handshake_ok() && !first.reused() && sess.exists(),
        "first, full handshake: {first:#?}"
    );

    let resumed = resume_on_every_worker(port, &env, &sess, 4, 3);
    for (pid, out) in &resumed {
        assert_resumed(out, "same generation");
        assert!(
            first_gen.contains(pid),
            "{pid} not a worker of {first_gen:?}"
        );
    }
    let mut pids: Vec<i32> = resumed.iter().map(|(p, _)| *p).collect();
    pids.sort_unstable();
    pids.dedup();
    eprintln!("resumed {} connections on workers {pids:?}", resumed.len());
    assert!(
        resumed.len() >= 10 && pids.len() >= 3,
        "{} resumed connections answered by workers {pids:?}",
        resumed.len()
    );

    // A reload builds new contexts; with the key file the tickets still decrypt.
    server.signal(libc::SIGHUP);
    let second_gen = wait_new_generation(&server, &first_gen, 4);
    for _ in 0..3 {
        let (pid, out) = resumed_request(port, &env, &sess);
        assert_resumed(&out, "after SIGHUP with ticket-key-file");
        assert!(second_gen.contains(&pid), "{pid} not in {second_gen:?}");
    }
}

#[test]
fn without_ticket_key_file_a_reload_means_a_full_handshake() {
    let _w = watchdog(
        "without_ticket_key_file_a_reload_means_a_full_handshake",
        LIMIT,
    );
    let env = TestEnv::new();
    let port = free_port();
    let config = format!(
        "processes = 2\nthreads = 4\n{}",
        https_table(port, "client-ca = \"ca.crt\"")
    );
    let server = Server::start(env.dir(), &config, port);
    let first_gen = server.wait_workers(2, T);
    let sess = env.path("session.pem");
    let first = s_client(port, &resume_args(&env, ("-sess_out", &sess)), GET_10, T);
    assert!(first.handshake_ok() && sess.exists(), "{first:#?}");
    // Same generation: the workers share the context made before fork, and its keys.
    let (_, again) = resumed_request(port, &env, &sess);
    assert_resumed(&again, "same generation, random keys");

    server.signal(libc::SIGHUP);
    let second_gen = wait_new_generation(&server, &first_gen, 2);
    let (pid, after) = resumed_request(port, &env, &sess);
    assert!(second_gen.contains(&pid));
    assert!(
        !after.reused() && after.page_value("session-reused").as_deref() == Some("no"),
        "new random ticket keys after a reload: a full handshake: {after:#?}"
    );
}

// ---------------------------------------------------------------- 4. PROXY protocol

/// A TCP connection to 127.0.0.1:port from `source` (a loopback address).
fn connect_from(source: Ipv4Addr, port: u16) -> TcpStream {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .expect("socket");
    let [a, b, c, d] = source.octets();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(a, b, c, d, 0),
    )
    .expect("bind");
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, port),
    )
    .expect("connect");
    // SAFETY: the fd is a connected TCP socket we own; TcpStream takes it over.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}

/// TLS (test CA, SNI localhost) over `tcp`, one `GET path`, the response.
fn tls_get(env: &TestEnv, tcp: TcpStream, path: &str) -> Result<Response, String> {
    tcp.set_read_timeout(Some(T)).ok();
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    b.set_ca_file(&env.certs.ca_crt)
        .map_err(|e| e.to_string())?;
    let mut tls = b
        .build()
        .connect("localhost", tcp)
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    read_response(&mut BufReader::new(tls), false).map_err(|e| e.to_string())
}

#[test]
fn haproxy_send_proxy_v2_gives_the_backend_the_client_address() {
    let _w = watchdog(
        "haproxy_send_proxy_v2_gives_the_backend_the_client_address",
        LIMIT,
    );
    let env = TestEnv::new();
    let backend = Backend::tcp();
    let (pp_port, plain_port, haproxy_port) = (free_port(), free_port(), free_port());
    let config = format!(
        "processes = 1\nthreads = 8\nhttp-to = {}\n{}{}",
        toml_str(&backend.http_to()),
        https_table(pp_port, "proxy-protocol = true"),
        https_table(plain_port, ""),
    );
    let mut server = Server::spawn(env.dir(), &config);
    server.wait_ready(plain_port, None);

    let cfg = env.path("haproxy.cfg");
    fs::write(
        &cfg,
        format!(
            "global\n  maxconn 100\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\n\
             frontend fe\n  bind 127.0.0.1:{haproxy_port}\n  default_backend be\n\n\
             backend be\n  server tls 127.0.0.1:{pp_port} send-proxy-v2\n"
        ),
    )
    .expect("write haproxy.cfg");
    let haproxy = Proc::spawn(Command::new("haproxy").arg("-f").arg(&cfg).arg("-db"));
    assert!(
        wait_tcp(haproxy_port, T),
        "haproxy did not start: {}",
        haproxy.describe()
    );

    // Through HAProxy, from 127.0.0.2: the backend sees that address and port.
    let tcp = connect_from(Ipv4Addr::new(127, 0, 0, 2), haproxy_port);
    let client_port = tcp.local_addr().expect("local addr").port();
    let resp = tls_get(&env, tcp, "/via-haproxy").unwrap_or_else(|e| {
        panic!("through haproxy: {e}\n{}", haproxy.describe());
    });
    assert_eq!(resp.status, 200, "{resp:?}");
    let vars = backend.request_for("/via-haproxy").expect("backend saw it");
    assert_eq!(var(&vars, "REMOTE_ADDR"), Some("127.0.0.2"), "{vars:#?}");
    assert_eq!(
        var(&vars, "REMOTE_PORT"),
        Some(client_port.to_string().as_str()),
        "{vars:#?}"
    );

    // curl through HAProxy too.
    let out = common::curl(&env.certs, haproxy_port, "/curl")
        .arg("--interface")
        .arg("127.0.0.3")
        .run();
    assert_eq!(out.status, Some(200), "{out:?}");
    let vars = backend.request_for("/curl").expect("backend saw curl");
    assert_eq!(var(&vars, "REMOTE_ADDR"), Some("127.0.0.3"), "{vars:#?}");

    // A PROXY v1 header written by hand.
    let mut tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, pp_port)).expect("connect");
    tcp.write_all(format!("PROXY TCP4 203.0.113.7 127.0.0.1 40000 {pp_port}\r\n").as_bytes())
        .expect("write header");
    let resp = tls_get(&env, tcp, "/v1").expect("PROXY v1");
    assert_eq!(resp.status, 200);
    let vars = backend.request_for("/v1").expect("backend saw /v1");
    assert_eq!(var(&vars, "REMOTE_ADDR"), Some("203.0.113.7"));
    assert_eq!(var(&vars, "REMOTE_PORT"), Some("40000"));

    // Directly, without a header: refused.
    let direct = TcpStream::connect((Ipv4Addr::LOCALHOST, pp_port)).expect("connect");
    let err = tls_get(&env, direct, "/direct").expect_err("no PROXY header must be refused");
    assert!(err.contains("handshake"), "{err}");
    assert!(backend.request_for("/direct").is_none());
    let sc = s_client(pp_port, &args(&["-servername", "localhost"]), b"", T);
    assert!(!sc.handshake_ok(), "{sc:#?}");

    // The other listener has no PROXY protocol: direct clients work, with their address.
    let resp = tls_get(
        &env,
        TcpStream::connect((Ipv4Addr::LOCALHOST, plain_port)).expect("connect"),
        "/plain",
    )
    .expect("plain listener");
    assert_eq!(resp.status, 200);
    let vars = backend.request_for("/plain").expect("backend saw /plain");
    assert_eq!(var(&vars, "REMOTE_ADDR"), Some("127.0.0.1"));
    drop(server);
}

// ---------------------------------------------------------------- 5. master-as-root

#[test]
fn master_as_root_reads_a_root_only_key_at_start_and_reload() {
    let _w = watchdog(
        "master_as_root_reads_a_root_only_key_at_start_and_reload",
        LIMIT,
    );
    let Some((nobody_uid, nogroup)) = nobody() else {
        eprintln!("SKIPPED master_as_root_reads_a_root_only_key_at_start_and_reload: not root");
        return;
    };
    assert!(is_root());
    let env = TestEnv::new();
    // The folder and certificates are readable by everyone; the key by root only.
    env.certs.make_readable_by_group(nogroup).expect("modes");
    let key = env.path("root-only.key");
    fs::copy(&env.certs.server_key, &key).expect("copy key");
    std::os::unix::fs::chown(&key, Some(0), Some(0)).expect("chown");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod");
    let config = |port: u16, as_root: bool| {
        format!(
            "processes = 2\nthreads = 4\nuid = \"nobody\"\ngid = \"nogroup\"\nmaster-as-root = {as_root}\n\
             https = [{}]\n",
            toml_str(&format!("127.0.0.1:{port},server.crt,root-only.key"))
        )
    };

    let port = free_port();
    let server = Server::start(env.dir(), &config(port, true), port);
    let first_gen = server.wait_workers(2, T);
    assert_eq!(proc_status(server.pid).expect("master").uid[1], 0);
    for w in &first_gen {
        let st = proc_status(*w).expect("worker status");
        assert_eq!(st.uid, [nobody_uid; 4], "worker {w}: {st:?}");
    }
    server.signal(libc::SIGHUP);
    let second_gen = wait_new_generation(&server, &first_gen, 2);
    tls_probe(port, None).expect("the new generation serves");
    for w in &second_gen {
        assert_eq!(proc_status(*w).expect("worker").uid[1], nobody_uid);
    }
    assert!(server.log().contains("reload done"), "{}", server.log());
    drop(server);

    // Without master-as-root the dropped master cannot read the key: start fails, naming
    // the file and the uid.
    let env2 = TestEnv::new();
    env2.certs.make_readable_by_group(nogroup).expect("modes");
    let key2 = env2.path("root-only.key");
    fs::copy(&env2.certs.server_key, &key2).expect("copy key");
    fs::set_permissions(&key2, fs::Permissions::from_mode(0o600)).expect("chmod");
    let port2 = free_port();
    let mut failing = Server::spawn(env2.dir(), &config(port2, false));
    let st = failing.expect_exit(T);
    assert!(!st.success());
    let log = failing.log();
    assert!(
        log.contains(&key2.display().to_string()) && log.contains(&format!("as uid {nobody_uid}")),
        "the error should name the file and the uid:\n{log}"
    );
}

// ---------------------------------------------------------------- 6. OCSP stapling

#[test]
fn ocsp_response_is_stapled_and_reread_on_reload() {
    let _w = watchdog("ocsp_response_is_stapled_and_reread_on_reload", LIMIT);
    let env = TestEnv::new();
    let d = env.dir();
    let ca = Ca::new(d, "ocsp-ca", "OCSP CA");
    let leaf = ca.issue(d, "stapled", "Stapled", &["localhost"], KeyKind::Ec);
    let resp = env.path("stapled.ocsp");
    ca.ocsp_response(d, &leaf, &resp, false);
    let (port, plain_port) = (free_port(), free_port());
    let config = format!(
        "processes = 1\nthreads = 8\n[[https]]\nsocket = \"127.0.0.1:{port}\"\ncert = \"stapled.crt\"\n\
         key = \"stapled.key\"\nocsp-response = \"stapled.ocsp\"\n\n{}",
        https_table(plain_port, "")
    );
    let server = Server::start(d, &config, port);
    let status = |p: u16| s_client(p, &args(&["-servername", "localhost", "-status"]), b"", T);
    let out = status(port);
    assert!(
        out.out.contains("OCSP Response Status: successful")
            && out.out.contains("Cert Status: good"),
        "{out:#?}"
    );
    let plain = status(plain_port);
    assert!(
        plain.out.contains("OCSP response: no response sent"),
        "{plain:#?}"
    );

    // A new response (the certificate is revoked now) is read on SIGHUP: one that does not
    // say "good" is not stapled, and the log says why.
    ca.ocsp_response(d, &leaf, &resp, true);
    server.signal(libc::SIGHUP);
    let reread = wait_until(T, || {
        status(port).out.contains("OCSP response: no response sent")
    });
    assert!(reread, "{}", server.log());
    assert!(
        server.log().contains("stapled.ocsp") && server.log().contains("not stapled"),
        "{}",
        server.log()
    );
}

// ---------------------------------------------------------------- 7. file modes

#[test]
fn unsafe_file_modes_draw_warnings() {
    let _w = watchdog("unsafe_file_modes_draw_warnings", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    fs::set_permissions(&env.certs.server_key, fs::Permissions::from_mode(0o644)).expect("chmod");
    fs::set_permissions(&env.certs.server_crt, fs::Permissions::from_mode(0o666)).expect("chmod");
    let config_path = env.path("app.toml");
    fs::write(&config_path, common::config(port, None, "")).expect("write config");
    fs::set_permissions(&config_path, fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut server = Server::spawn_args(
        env.dir(),
        &[OsStr::new("--config"), config_path.as_os_str()],
        config_path.clone(),
    );
    server.wait_ready(port, None);
    let log = server.log();
    let warned = |file: &Path, what: &str| {
        log.lines()
            .any(|l| l.contains(&file.display().to_string()) && l.contains(what))
    };
    assert!(warned(&env.certs.server_key, "world-readable"), "{log}");
    assert!(warned(&env.certs.server_crt, "world-writable"), "{log}");
    assert!(warned(&config_path, "world-writable"), "{log}");
}
