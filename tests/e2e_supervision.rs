//! Supervision: SIGTTIN/SIGTTOU, graceful SIGTERM, harakiri, max-requests,
//! respawn backoff, pidfile, `--check`, SIGUSR1 log reopening.
//! (SPEC §3 respawn, scoreboard and signals, §4.1, §8)

mod common;

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use common::lifecycle::{
    count, lines_with, read_text, responder_pid, stats_doc, stats_workers, wait_count, Blackhole,
    Connector, Master,
};
use common::ports::port_is_free;
use common::server::describe_status;
use common::{
    children_of, config, curl, free_port, pid_alive, toml_str, wait_until, watchdog, Backend,
    Server, TestEnv,
};

const LIMIT: Duration = Duration::from_secs(180);

/// Acceptance 5: SIGTTIN adds one worker, SIGTTOU removes one; SIGTERM
/// drains (the request in flight completes) and the master exits 0 with
/// nothing left.
#[test]
fn ttin_ttou_change_workers_and_sigterm_drains() {
    let _wd = watchdog("ttin_ttou_change_workers_and_sigterm_drains", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let cfg = config(port, Some(&backend.http_to()), "reload-mercy = 30\n")
        .replace("processes = 1", "processes = 2");
    let mut server = Server::start(env.dir(), &cfg, port);
    let two = server.wait_workers(2, Duration::from_secs(10));

    server.signal(libc::SIGTTIN);
    let three = server.wait_workers(3, Duration::from_secs(10));
    assert!(
        two.iter().all(|p| three.contains(p)),
        "SIGTTIN should add a worker, not replace any: {two:?} -> {three:?}"
    );

    server.signal(libc::SIGTTOU);
    let back_to_two = server.wait_workers(2, Duration::from_secs(10));
    assert!(
        back_to_two.iter().all(|p| three.contains(p)),
        "SIGTTOU should remove a worker, not fork one: {three:?} -> {back_to_two:?}"
    );

    server.signal(libc::SIGTTOU);
    let one = server.wait_workers(1, Duration::from_secs(10));
    assert!(back_to_two.contains(&one[0]), "{back_to_two:?} -> {one:?}");

    // Stays at one: no respawn of the removed workers.
    thread::sleep(Duration::from_millis(600));
    assert_eq!(server.workers(), one, "the worker set changed by itself");
    let out = curl(&env.certs, port, "/one-worker").run();
    assert_eq!(out.status, Some(200), "{out:?}");

    // SIGTERM with a request in flight.
    let certs = env.certs.clone();
    let inflight = thread::spawn(move || curl(&certs, port, "/slow?ms=1500").max_time(40).run());
    assert!(
        wait_until(Duration::from_secs(10), || backend
            .request_for("/slow")
            .is_some()),
        "the slow request never reached the backend"
    );
    server.signal(libc::SIGTERM);
    let out = inflight.join().expect("curl thread");
    assert_eq!(out.status, Some(200), "in flight during SIGTERM: {out:?}");
    let st = server.expect_exit(Duration::from_secs(25));
    assert_eq!(
        st.code(),
        Some(0),
        "master after SIGTERM: {}",
        describe_status(&st)
    );
    let all: Vec<i32> = two.iter().chain(&three).chain(&one).copied().collect();
    assert!(
        wait_until(Duration::from_secs(5), || all
            .iter()
            .all(|&p| !pid_alive(p))),
        "workers left after SIGTERM: {:?}",
        all.iter().filter(|&&p| pid_alive(p)).collect::<Vec<_>>()
    );
    assert!(
        wait_until(Duration::from_secs(5), || port_is_free(port)),
        "port {port} still bound after the master exited"
    );
}

/// Acceptance 6a: `harakiri = 2` and a request stuck on a backend that
/// never answers: that worker (found busy in the stats) is replaced within
/// a few seconds; the other, idle worker is left alone.
#[test]
fn harakiri_replaces_stuck_worker() {
    let _wd = watchdog("harakiri_replaces_stuck_worker", LIMIT);
    let env = TestEnv::new();
    let hole = Blackhole::start();
    let port = free_port();
    let stats = free_port();
    let cfg = config(
        port,
        Some(&hole.addr.to_string()),
        &format!("harakiri = 2\nreload-mercy = 30\nstats = \"127.0.0.1:{stats}\"\n"),
    )
    .replace("processes = 1", "processes = 2");
    let server = Server::start(env.dir(), &cfg, port);
    let before = server.wait_workers(2, Duration::from_secs(10));

    let certs = env.certs.clone();
    let stuck_req = thread::spawn(move || curl(&certs, port, "/stuck").max_time(60).run());
    assert!(
        wait_until(Duration::from_secs(10), || hole.accepted() >= 1),
        "the request never reached the backend"
    );
    let t0 = Instant::now();
    // The stats say which worker is busy.
    let mut busy = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            busy = stats_doc(stats)
                .map(|d| stats_workers(&d))
                .unwrap_or_default()
                .into_iter()
                .filter(|w| w.status == "busy")
                .collect();
            busy.len() == 1
        }),
        "expected one busy worker in the stats, got {busy:?}"
    );
    let stuck = busy[0].pid;
    assert!(before.contains(&stuck), "{stuck} not in {before:?}");
    let idle = *before
        .iter()
        .find(|&&p| p != stuck)
        .expect("the other worker");

    let mut now = Vec::new();
    let replaced = wait_until(Duration::from_secs(15), || {
        now = server.workers();
        !pid_alive(stuck) && now.len() == 2 && now.iter().any(|p| !before.contains(p))
    });
    let took = t0.elapsed();
    assert!(
        replaced,
        "stuck worker {stuck} not replaced after {took:?} (workers now {now:?})"
    );
    eprintln!("harakiri: stuck worker {stuck} replaced after {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "harakiri = 2 took {took:?} to replace the stuck worker"
    );
    assert!(
        now.contains(&idle) && pid_alive(idle),
        "the idle worker {idle} must not be touched by harakiri (workers now {now:?})"
    );
    let log = server.log();
    let hara = lines_with(&log, "HARAKIRI");
    assert!(
        hara.len() == 1 && hara[0].contains(&stuck.to_string()),
        "one HARAKIRI line naming {stuck} expected: {hara:?}"
    );
    // The stuck client gets an answer or a close, not a hang.
    let out = stuck_req.join().expect("curl thread");
    assert!(
        out.exit != 28,
        "the stuck client hung until its own timeout: {out:?}"
    );
}

/// Acceptance 6b: with `harakiri = 1`, workers with no request in flight
/// (after a request, and with an idle kept-alive connection open) are never
/// replaced.
#[test]
fn idle_workers_are_never_harakiried() {
    let _wd = watchdog("idle_workers_are_never_harakiried", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let cfg = config(port, None, "harakiri = 1\nhttp-keepalive = 30\n")
        .replace("processes = 1", "processes = 2");
    let server = Server::start(env.dir(), &cfg, port);
    let before = server.wait_workers(2, Duration::from_secs(10));

    let out = curl(&env.certs, port, "/once").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    let connector = Connector::new(port, &env.certs.ca_crt);
    let mut kept = connector.connect().expect("connect");
    let r = kept.get("/first").expect("first request");
    assert_eq!(r.status, 200, "{r:?}");

    // The "nothing happens" window: 3 s, three times the limit.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        server.workers(),
        before,
        "idle workers were replaced with harakiri = 1"
    );
    assert!(
        !server.log().contains("HARAKIRI"),
        "harakiri fired on idle workers: {:?}",
        lines_with(&server.log(), "HARAKIRI")
    );
    let r = kept
        .get("/second")
        .expect("the idle kept-alive connection should still work");
    assert_eq!(r.status, 200, "{r:?}");
}

/// Acceptance 6c: `max-requests = 20` and 100 sequential requests: every
/// one gets 200, and the answers come from several successive workers.
#[test]
fn max_requests_recycles_without_failing_a_request() {
    let _wd = watchdog("max_requests_recycles_without_failing_a_request", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let cfg = config(port, None, "max-requests = 20\nreload-mercy = 30\n");
    let server = Server::start(env.dir(), &cfg, port);
    let first = server.wait_workers(1, Duration::from_secs(10));

    let connector = Connector::new(port, &env.certs.ca_crt);
    let mut pids: Vec<i32> = Vec::new();
    let mut per_pid: Vec<(i32, usize)> = Vec::new();
    for i in 0..100 {
        let path = format!("/req/{i}");
        let r = connector
            .connect()
            .and_then(|mut c| c.get(&path).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("request {i} of 100 failed (max-requests recycling): {e}"));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        let pid = responder_pid(&r).unwrap_or_else(|| panic!("no worker-pid in {r:?}"));
        server.workers();
        if !pids.contains(&pid) {
            pids.push(pid);
            per_pid.push((pid, 0));
        }
        per_pid.iter_mut().find(|(p, _)| *p == pid).expect("pid").1 += 1;
    }
    eprintln!("max-requests: answers per worker {per_pid:?}");
    assert_eq!(pids[0], first[0], "the first worker answers first");
    // Each worker answers at most 20 + 10 % jitter (+1 it may have
    // accepted while stopping): 100 requests need at least 4 workers.
    assert!(
        pids.len() >= 4,
        "100 requests with max-requests = 20 came from only {} workers: {per_pid:?}",
        pids.len()
    );
    for &(pid, n) in &per_pid {
        assert!(
            n <= 23,
            "worker {pid} answered {n} requests (max-requests 20)"
        );
    }
    let log = server.log();
    assert!(
        count(&log, "reached max-requests") >= 3,
        "{:?}",
        lines_with(&log, "max-requests")
    );
    assert!(
        !log.contains("died after"),
        "a recycled worker should exit cleanly: {:?}",
        lines_with(&log, "died after")
    );
    server.wait_workers(1, Duration::from_secs(10));
}

/// Acceptance 7: workers that abort right after fork: the master stays up,
/// logs the backoff, and forks at a bounded rate (about one per second once
/// the 1 s cap is reached); SIGTERM still stops it.
#[test]
fn crashing_workers_back_off() {
    let _wd = watchdog("crashing_workers_back_off", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let mut master = Master::spawn(
        env.dir(),
        &config(port, None, ""),
        &[("UWSGI_MASTER_TEST_CRASH_WORKERS", "1")],
    );
    assert!(
        wait_until(Duration::from_secs(10), || master
            .log()
            .contains("spawned worker")),
        "no worker was ever spawned"
    );
    let t0 = Instant::now();
    let spawned = |m: &Master| count(&m.log(), "spawned worker");
    // "Nothing happens" windows: the master must just keep going.
    thread::sleep(Duration::from_secs(3));
    let at3 = spawned(&master);
    thread::sleep(Duration::from_secs(2));
    let at5 = spawned(&master);
    let elapsed = t0.elapsed();
    master.workers();
    assert!(
        master.try_exit().is_none() && pid_alive(master.pid),
        "the master died while its workers crashed"
    );
    let log = master.log();
    eprintln!(
        "crash loop: {at5} forks in {elapsed:?} ({} in the last 2 s)",
        at5 - at3
    );
    assert!(
        log.contains("workers are dying fast: next respawn in"),
        "the backoff is not logged"
    );
    assert!(
        at5 >= 4,
        "only {at5} forks in 5 s: is it respawning at all?"
    );
    assert!(at5 < 30, "{at5} forks in 5 s: fork loop");
    assert!(
        at5 - at3 <= 4,
        "{} forks in 2 s after the backoff reached its cap (1 s)",
        at5 - at3
    );
    assert!(
        log.contains("died after"),
        "worker deaths should be logged with their cause"
    );

    master.signal(libc::SIGTERM);
    let st = master.wait_exit(Duration::from_secs(15));
    assert!(
        st.is_some(),
        "the master did not exit on SIGTERM while its workers crash"
    );
    let st = st.expect("status");
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(children_of(master.pid).is_empty());
}

/// Acceptance 10: the pidfile holds the master pid while it runs (a stale
/// one is replaced) and is removed when it exits on SIGTERM.
#[test]
fn pidfile_written_and_removed() {
    let _wd = watchdog("pidfile_written_and_removed", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let pidfile = env.path("run/uwsgi-master.pid");
    std::fs::create_dir_all(pidfile.parent().expect("parent")).expect("mkdir run");
    // A stale pidfile: a pid that is not running.
    let stale = (400_000..4_000_000)
        .step_by(7919)
        .find(|&p| !pid_alive(p))
        .expect("a free pid");
    std::fs::write(&pidfile, format!("{stale}\n")).expect("write stale pidfile");
    let cfg = config(
        port,
        None,
        &format!("pidfile = {}\n", toml_str(&pidfile.display().to_string())),
    );
    let mut server = Server::start(env.dir(), &cfg, port);
    let content = read_text(&pidfile);
    assert_eq!(
        content.trim(),
        server.pid.to_string(),
        "pidfile {} should hold the master pid",
        pidfile.display()
    );
    server.signal(libc::SIGTERM);
    let st = server.expect_exit(Duration::from_secs(20));
    assert_eq!(st.code(), Some(0), "{}", describe_status(&st));
    assert!(
        !pidfile.exists(),
        "pidfile still there after exit: {:?}",
        read_text(&pidfile)
    );
}

/// `--check`: 0 and "configuration OK" for a good config; 1 and "NOT OK"
/// naming the file for a key path that does not exist.
#[test]
fn check_good_and_bad_config() {
    let _wd = watchdog("check_good_and_bad_config", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let good = env.path("good.toml");
    std::fs::write(&good, config(port, None, "")).expect("write good.toml");
    let out = Command::new(common::bin())
        .arg("--check")
        .arg("--config")
        .arg(&good)
        .output()
        .expect("run --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "--check on a good config: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.trim_end().ends_with("configuration OK"),
        "--check output should end with \"configuration OK\": {stdout}"
    );
    assert!(port_is_free(port), "--check must not bind the port");

    let bad = env.path("bad.toml");
    std::fs::write(
        &bad,
        config(port, None, "").replace("server.key", "missing-server.key"),
    )
    .expect("write bad.toml");
    let out = Command::new(common::bin())
        .arg("--check")
        .arg("--config")
        .arg(&bad)
        .output()
        .expect("run --check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "--check on a config with a missing key file: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("configuration NOT OK") && stdout.contains("missing-server.key"),
        "the error should say NOT OK and name missing-server.key: {stdout}"
    );
}

/// SIGUSR1 with `log-file`: after the file is renamed away, SIGUSR1 makes
/// the master and the workers write to a fresh file at the original path.
#[test]
fn sigusr1_reopens_log_file() {
    let _wd = watchdog("sigusr1_reopens_log_file", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let log_file = env.path("app.log");
    let rotated = env.path("app.log.1");
    let cfg = config(
        port,
        None,
        &format!(
            "log-file = {}\nlog-level = \"debug\"\naccess-log = true\n",
            toml_str(&log_file.display().to_string())
        ),
    );
    let server = Server::start(env.dir(), &cfg, port);
    let out = curl(&env.certs, port, "/before-rotation").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(10), || read_text(&log_file)
            .contains("/before-rotation")),
        "the access log line of a request should be in the log file: {}",
        read_text(&log_file)
    );
    assert!(read_text(&log_file).contains("spawned worker"));

    std::fs::rename(&log_file, &rotated).expect("rotate the log file");
    server.signal(libc::SIGUSR1);
    // The master logs this after reopening and signalling its workers.
    assert!(
        wait_until(Duration::from_secs(10), || read_text(&log_file)
            .contains("SIGUSR1")),
        "SIGUSR1 did not recreate {} with the master's next line: {:?}",
        log_file.display(),
        read_text(&log_file)
    );
    // A worker's line (the access log of a request to the same worker that
    // was running before the rotation) goes to the new file.
    let out = curl(&env.certs, port, "/after-rotation").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    assert!(
        wait_until(Duration::from_secs(10), || read_text(&log_file)
            .contains("/after-rotation")),
        "the worker's access log line should be in the new file; new file: {:?}; old \
         file's tail: {:?}",
        read_text(&log_file),
        read_text(&rotated)
            .lines()
            .rev()
            .take(5)
            .collect::<Vec<_>>()
    );
    // A master line (a reload) too.
    server.signal(libc::SIGHUP);
    assert!(
        wait_count(
            || read_text(&log_file),
            "reload done",
            1,
            Duration::from_secs(10)
        ),
        "the master's \"reload done\" should be in the new file: {}",
        read_text(&log_file)
    );
    let old = read_text(&rotated);
    assert!(
        !old.contains("/after-rotation") && !old.contains("reload done"),
        "lines after SIGUSR1 went to the rotated file: {old}"
    );
}
