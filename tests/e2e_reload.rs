//! SIGHUP reload by generations: no failed request under load, certificate
//! swap, a broken reload keeps the old generation, long requests survive.
//! (SPEC §3 generations and signals, §6 graceful stop)

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::lifecycle::{
    count, lines_with, peer_serial, pem_serial, replace_file, says_close, stats_doc, wait_count,
    Conn, Connector, NewCert,
};
use common::{config, curl, free_port, pid_alive, wait_until, watchdog, Backend, Server, TestEnv};
use common::{procs, TlsConn};

const LIMIT: Duration = Duration::from_secs(240);

/// Send SIGHUP and wait until the log shows one more "reload done" line.
fn hup_and_wait(server: &Server, timeout: Duration) -> Duration {
    let before = count(&server.log(), "reload done");
    let t0 = Instant::now();
    server.signal(libc::SIGHUP);
    assert!(
        wait_count(|| server.log(), "reload done", before + 1, timeout),
        "SIGHUP #{}: no new \"reload done\" line within {timeout:?}",
        before + 1
    );
    t0.elapsed()
}

/// Acceptance 1: >= 500 requests on new TLS connections from several
/// threads, plus one keep-alive client, while the master gets 20 SIGHUPs:
/// no failed request, no reset. The keep-alive client reconnects only after
/// an answer with `Connection: close`.
#[test]
fn twenty_reloads_under_load_fail_nothing() {
    let _wd = watchdog("twenty_reloads_under_load_fail_nothing", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let cfg = config(port, None, "reload-mercy = 30\n").replace("processes = 1", "processes = 2");
    let server = Server::start(env.dir(), &cfg, port);
    server.wait_workers(2, Duration::from_secs(10));

    const CLIENT_THREADS: usize = 3;
    const MIN_REQUESTS: usize = 500;
    // Upper bound on the load whatever the speed of the machine.
    const MAX_REQUESTS: usize = 1500;
    // Each client thread makes at most one request per PACE, so that the
    // load spans the whole SIGHUP phase (~4 s) at ~200 requests/s.
    const PACE: Duration = Duration::from_millis(15);

    let stop = Arc::new(AtomicBool::new(false));
    let hups_done = Arc::new(AtomicBool::new(false));
    let issued = Arc::new(AtomicUsize::new(0));
    let completed = Arc::new(AtomicUsize::new(0));
    let failures: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));

    let mut clients = Vec::new();
    for t in 0..CLIENT_THREADS {
        let (stop, hups_done, issued, completed, failures) = (
            stop.clone(),
            hups_done.clone(),
            issued.clone(),
            completed.clone(),
            failures.clone(),
        );
        let connector = Connector::new(port, &env.certs.ca_crt);
        clients.push(thread::spawn(move || loop {
            let next = Instant::now() + PACE;
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let done = completed.load(Ordering::SeqCst);
            if hups_done.load(Ordering::SeqCst) && done >= MIN_REQUESTS {
                return;
            }
            let n = issued.fetch_add(1, Ordering::SeqCst);
            if n >= MAX_REQUESTS {
                return;
            }
            let path = format!("/new-conn/{t}/{n}");
            let result = connector
                .connect()
                .and_then(|mut c| c.get(&path).map_err(|e| format!("request {path}: {e}")));
            match result {
                Ok(r) if r.status == 200 && r.text().contains(&format!("GET {path} ")) => {
                    completed.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => failures
                    .lock()
                    .unwrap()
                    .push(format!("new connection {path}: unexpected answer {r:?}")),
                Err(e) => failures
                    .lock()
                    .unwrap()
                    .push(format!("new connection {path}: {e}")),
            }
            thread::sleep(next.saturating_duration_since(Instant::now()));
        }));
    }

    // The keep-alive client.
    let ka_stats = Arc::new(Mutex::new((0usize, 0usize))); // (requests, reconnects after close)
    let ka = {
        let (stop, failures, ka_stats) = (stop.clone(), failures.clone(), ka_stats.clone());
        let connector = Connector::new(port, &env.certs.ca_crt);
        thread::spawn(move || {
            let mut conn: Option<Conn> = None;
            let mut n = 0usize;
            while !stop.load(Ordering::SeqCst) {
                if conn.is_none() {
                    match connector.connect() {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("keep-alive client: connect: {e}"));
                            return;
                        }
                    }
                }
                let c = conn.as_mut().expect("connection");
                let path = format!("/keep-alive/{n}");
                n += 1;
                match c.get(&path) {
                    Ok(r) if r.status == 200 && r.text().contains(&format!("GET {path} ")) => {
                        ka_stats.lock().unwrap().0 += 1;
                        if says_close(&r) {
                            ka_stats.lock().unwrap().1 += 1;
                            conn = None;
                        }
                    }
                    Ok(r) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("keep-alive {path}: unexpected answer {r:?}"));
                        return;
                    }
                    Err(e) => {
                        failures.lock().unwrap().push(format!(
                            "keep-alive {path}: error on a sent request (no Connection: close \
                             before): {e} (kind {:?})",
                            e.kind()
                        ));
                        return;
                    }
                }
                thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // Let the load start, then 20 SIGHUPs, each waited for (so none is
    // coalesced with the next), spaced ~150 ms.
    assert!(
        wait_until(Duration::from_secs(30), || completed.load(Ordering::SeqCst)
            >= 20),
        "the clients did not get going: {:?}",
        failures.lock().unwrap()
    );
    let t0 = Instant::now();
    let at_first_hup = completed.load(Ordering::SeqCst);
    let mut reload_times = Vec::new();
    for _ in 0..20 {
        reload_times.push(hup_and_wait(&server, Duration::from_secs(10)));
        thread::sleep(Duration::from_millis(150));
    }
    let hup_phase = t0.elapsed();
    let during_hups = completed.load(Ordering::SeqCst) - at_first_hup;
    hups_done.store(true, Ordering::SeqCst);

    let finished = wait_until(Duration::from_secs(120), || {
        clients.iter().all(|c| c.is_finished())
    });
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    ka.join().expect("keep-alive thread");
    assert!(finished, "the clients did not finish within 120 s");

    let failures = failures.lock().unwrap().clone();
    let total = completed.load(Ordering::SeqCst);
    let (ka_requests, ka_closes) = *ka_stats.lock().unwrap();
    eprintln!(
        "reload under load: {total} new-connection requests ({during_hups} during the \
         SIGHUP phase of {hup_phase:?}), {ka_requests} keep-alive requests, {ka_closes} \
         Connection: close, reload times {reload_times:?}"
    );
    assert!(
        failures.is_empty(),
        "{} failed requests during 20 reloads, first ones: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        total >= MIN_REQUESTS,
        "only {total} new-connection requests completed"
    );
    assert!(
        during_hups >= 100,
        "only {during_hups} new-connection requests overlapped the 20 reloads"
    );
    assert!(
        ka_requests >= 20,
        "only {ka_requests} keep-alive requests were made"
    );
    assert!(
        ka_closes >= 1,
        "20 reloads and the keep-alive connection never got Connection: close: \
         its worker was never retired?"
    );
    let log = server.log();
    assert!(
        log.contains("reload done: generation 21 started"),
        "20 reloads should reach generation 21: {:?}",
        lines_with(&log, "reload")
    );
    // Every old generation drains and exits: back to 2 workers.
    server.wait_workers(2, Duration::from_secs(40));
    let out = curl(&env.certs, port, "/after").run();
    assert_eq!(out.status, Some(200), "{out:?}");
}

/// Acceptance 2: new cert+key renamed over the old paths + SIGHUP: a new
/// handshake presents the new certificate within 1 s; a request in flight on
/// a connection opened before the reload completes normally (its answer says
/// `Connection: close`, then the old worker closes the connection).
#[test]
fn sighup_swaps_certificate_within_a_second() {
    let _wd = watchdog("sighup_swaps_certificate_within_a_second", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let cfg = config(port, Some(&backend.http_to()), "reload-mercy = 30\n");
    let server = Server::start(env.dir(), &cfg, port);

    let old_serial = pem_serial(&env.certs.server_crt);
    assert_eq!(
        peer_serial(port).expect("handshake"),
        old_serial,
        "the server should present server.crt before the swap"
    );

    // A connection opened before the reload, with a request in flight.
    let mut early = TlsConn::connect(port, &env.certs).expect("connect before the reload");
    early
        .send(b"GET /slow?ms=2000 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("send the slow request");
    assert!(
        wait_until(Duration::from_secs(10), || backend
            .request_for("/slow")
            .is_some()),
        "the slow request never reached the backend"
    );

    let new = NewCert::generate("Reloaded");
    assert_ne!(new.serial, old_serial);
    replace_file(&env.certs.server_key, &new.key_pem, 0o600);
    replace_file(&env.certs.server_crt, &new.cert_pem, 0o644);

    let t0 = Instant::now();
    server.signal(libc::SIGHUP);
    let mut last = String::new();
    let seen_new = wait_until(Duration::from_secs(10), || {
        last = peer_serial(port).unwrap_or_else(|e| e);
        last == new.serial
    });
    let took = t0.elapsed();
    assert!(
        seen_new,
        "after the swap + SIGHUP new handshakes still get {last} (new serial {})",
        new.serial
    );
    assert!(
        took <= Duration::from_secs(1),
        "the new certificate was presented only after {took:?} (limit 1 s)"
    );
    let cert = common::lifecycle::peer_cert(port).expect("handshake");
    let org = cert
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::ORGANIZATIONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok());
    assert_eq!(org.as_deref(), Some("Reloaded"));

    // The early connection: its answer arrives, complete.
    let r = early
        .read_response()
        .expect("the in-flight request's answer");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.text().contains("PATH_INFO=/slow"), "{r:?}");
    let early_serial = early
        .stream()
        .ssl()
        .peer_certificate()
        .map(|c| common::lifecycle::serial_hex(&c));
    assert_eq!(early_serial.as_deref(), Some(old_serial.as_str()));
    // Its worker was told to stop while the request was in flight: this
    // answer is its last on the connection (Connection: close), then close.
    assert!(
        says_close(&r),
        "the old generation's answer on a kept-alive connection should say Connection: \
         close: {r:?}"
    );
    assert!(
        early.closed_within(Duration::from_secs(5)),
        "the old worker should close the connection after Connection: close"
    );
    assert!(server.log().contains("reload done: generation 2 started"));
}

/// Acceptance 3: a broken certificate, then a key that does not match, +
/// SIGHUP: "reload failed" is logged, the master stays up and keeps the old
/// certificate; after good files are back the next SIGHUP works.
#[test]
fn broken_reload_keeps_old_generation() {
    let _wd = watchdog("broken_reload_keeps_old_generation", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let stats = free_port();
    let cfg = config(
        port,
        None,
        &format!("reload-mercy = 30\nstats = \"127.0.0.1:{stats}\"\n"),
    );
    let server = Server::start(env.dir(), &cfg, port);
    let workers = server.wait_workers(1, Duration::from_secs(10));
    let old_serial = pem_serial(&env.certs.server_crt);
    let good_crt = std::fs::read(&env.certs.server_crt).expect("read server.crt");

    // 1. Garbage PEM as the certificate.
    replace_file(
        &env.certs.server_crt,
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        0o644,
    );
    server.signal(libc::SIGHUP);
    assert!(
        wait_count(|| server.log(), "reload failed", 1, Duration::from_secs(10)),
        "garbage certificate + SIGHUP: no \"reload failed\" line"
    );
    let log = server.log();
    let line = lines_with(&log, "reload failed")[0].to_string();
    assert!(
        line.contains("server.crt"),
        "the reload error should name the broken file server.crt: {line}"
    );
    assert!(pid_alive(server.pid), "the master died on a broken reload");
    for _ in 0..5 {
        assert_eq!(
            peer_serial(port).expect("handshake after the failed reload"),
            old_serial,
            "after a failed reload the old certificate must still be served"
        );
    }
    assert_eq!(
        server.workers(),
        workers,
        "a failed reload changed the workers"
    );
    let doc = stats_doc(stats).expect("stats");
    assert_eq!(doc.int("generation"), 1, "{doc:?}");
    assert!(!log.contains("reload done"), "{log}");

    // 2. A good certificate with a key that does not match it.
    replace_file(&env.certs.server_crt, &good_crt, 0o644);
    let wrong_key = std::fs::read(&env.certs.client_key).expect("read client.key");
    replace_file(&env.certs.server_key, &wrong_key, 0o600);
    server.signal(libc::SIGHUP);
    assert!(
        wait_count(|| server.log(), "reload failed", 2, Duration::from_secs(10)),
        "mismatched key + SIGHUP: no second \"reload failed\" line"
    );
    let log = server.log();
    let line = lines_with(&log, "reload failed")[1].to_string();
    assert!(
        line.contains("server.key") || line.contains("server.crt"),
        "the reload error should name the key or certificate file: {line}"
    );
    assert!(pid_alive(server.pid), "the master died on a broken reload");
    assert_eq!(peer_serial(port).expect("handshake"), old_serial);
    assert_eq!(
        server.workers(),
        workers,
        "a failed reload changed the workers"
    );
    assert_eq!(stats_doc(stats).expect("stats").int("generation"), 1);
    let out = curl(&env.certs, port, "/still-serving").run();
    assert_eq!(out.status, Some(200), "{out:?}");

    // 3. Good files (a new pair) and SIGHUP: generation 2, new certificate.
    let new = NewCert::generate("Fixed");
    replace_file(&env.certs.server_key, &new.key_pem, 0o600);
    replace_file(&env.certs.server_crt, &new.cert_pem, 0o644);
    hup_and_wait(&server, Duration::from_secs(10));
    assert!(
        server.log().contains("reload done: generation 2 started"),
        "{:?}",
        lines_with(&server.log(), "reload")
    );
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            last = peer_serial(port).unwrap_or_else(|e| e);
            last == new.serial
        }),
        "after the good reload new handshakes get {last}, not {}",
        new.serial
    );
    let mut gen = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            gen = stats_doc(stats).map(|d| d.int("generation")).unwrap_or(0);
            gen == 2
        }),
        "stats generation after the good reload: {gen}"
    );
}

/// Acceptance 4: a request the backend answers after 3 s, in flight during
/// SIGHUP, completes with 200; new requests are served meanwhile.
#[test]
fn long_request_survives_reload() {
    let _wd = watchdog("long_request_survives_reload", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let cfg = config(port, Some(&backend.http_to()), "reload-mercy = 30\n")
        .replace("processes = 1", "processes = 2");
    let server = Server::start(env.dir(), &cfg, port);
    let old_workers = server.wait_workers(2, Duration::from_secs(10));

    let certs = env.certs.clone();
    let t0 = Instant::now();
    let slow = thread::spawn(move || curl(&certs, port, "/slow?ms=3000").max_time(40).run());
    assert!(
        wait_until(Duration::from_secs(10), || backend
            .request_for("/slow")
            .is_some()),
        "the slow request never reached the backend"
    );
    hup_and_wait(&server, Duration::from_secs(10));
    assert!(
        !slow.is_finished(),
        "the slow request ended before the reload"
    );

    // The new generation serves while the old one drains.
    let out = curl(&env.certs, port, "/during").run();
    assert_eq!(out.status, Some(200), "request during the drain: {out:?}");

    let out = slow.join().expect("curl thread");
    assert_eq!(out.status, Some(200), "slow request across SIGHUP: {out:?}");
    assert!(out.text().contains("PATH_INFO=/slow"), "{out:?}");
    assert!(
        t0.elapsed() >= Duration::from_secs(3),
        "the answer came before the backend's 3 s"
    );

    // The old generation exits once drained; two new workers remain.
    let mut now = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            now = server.workers();
            now.len() == 2 && now.iter().all(|p| !old_workers.contains(p))
        }),
        "old workers {old_workers:?} should be replaced; now {now:?}"
    );
    assert!(old_workers.iter().all(|&p| !procs::pid_alive(p)));
}
