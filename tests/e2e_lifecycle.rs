//! Process lifecycle: respawn, master death, graceful and fast shutdown,
//! worker count. (SPEC §3 process model and signals)

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::ports::port_is_free;
use common::server::describe_status;
use common::{config, curl, free_port, pid_alive, wait_until, watchdog, Backend, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(120);

/// A killed worker is replaced; a killed master takes its workers with it
/// and frees the port.
#[test]
fn worker_respawn_and_master_sigkill() {
    let _wd = watchdog("worker_respawn_and_master_sigkill", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let mut server = Server::start(env.dir(), &config(port, None, ""), port);

    let old = server.wait_workers(1, Duration::from_secs(10))[0];
    common::procs::kill(old, libc::SIGKILL);

    let mut current = Vec::new();
    let respawned = wait_until(Duration::from_secs(10), || {
        current = server.workers();
        current.len() == 1 && current[0] != old
    });
    assert!(
        respawned,
        "worker {old} was SIGKILLed; expected one new worker, found {current:?}"
    );
    assert!(!pid_alive(old), "old worker {old} still alive");
    let new = current[0];

    let out = curl(&env.certs, port, "/after-respawn").run();
    assert_eq!(out.status, Some(200), "request after respawn: {out:?}");
    assert!(
        out.text().contains(&format!("worker-pid: {new}")),
        "the new worker {new} should answer: {out:?}"
    );

    // SIGKILL the master: PR_SET_PDEATHSIG must take the worker down too.
    common::procs::kill(server.pid, libc::SIGKILL);
    let st = server.expect_exit(Duration::from_secs(10));
    assert_eq!(st.signal(), Some(libc::SIGKILL), "{}", describe_status(&st));
    assert!(
        wait_until(Duration::from_secs(10), || !pid_alive(new)
            && !pid_alive(old)),
        "worker {new} outlived its SIGKILLed master"
    );
    assert!(
        wait_until(Duration::from_secs(10), || port_is_free(port)),
        "port {port} still bound after the master and its workers died"
    );
}

/// SIGTERM: the request in flight completes, the master exits 0, no worker
/// is left.
#[test]
fn sigterm_drains_in_flight_request() {
    let _wd = watchdog("sigterm_drains_in_flight_request", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let cfg = config(port, Some(&backend.http_to()), "reload-mercy = 30\n")
        .replace("processes = 1", "processes = 2");
    let mut server = Server::start(env.dir(), &cfg, port);
    let workers = server.wait_workers(2, Duration::from_secs(10));

    let certs = env.certs.clone();
    let inflight =
        std::thread::spawn(move || curl(&certs, port, "/slow?ms=2000").max_time(40).run());
    let arrived = wait_until(Duration::from_secs(10), || {
        backend.request_for("/slow").is_some()
    });
    assert!(arrived, "the slow request never reached the backend");

    server.signal(libc::SIGTERM);

    let out = inflight.join().expect("curl thread");
    assert_eq!(
        out.status,
        Some(200),
        "in-flight request during SIGTERM: {out:?}"
    );
    assert!(out.text().contains("PATH_INFO=/slow"), "{out:?}");

    let st = server.expect_exit(Duration::from_secs(25));
    assert_eq!(
        st.code(),
        Some(0),
        "master after SIGTERM: {}",
        describe_status(&st)
    );
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|&w| !pid_alive(w))),
        "workers {workers:?} still alive after graceful shutdown"
    );
}

/// SIGINT: fast shutdown, master exits 0, workers gone.
#[test]
fn sigint_exits_fast() {
    let _wd = watchdog("sigint_exits_fast", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let cfg = config(port, None, "").replace("processes = 1", "processes = 2");
    let mut server = Server::start(env.dir(), &cfg, port);
    let workers = server.wait_workers(2, Duration::from_secs(10));

    server.signal(libc::SIGINT);
    let st = server.expect_exit(Duration::from_secs(5));
    assert_eq!(
        st.code(),
        Some(0),
        "master after SIGINT: {}",
        describe_status(&st)
    );
    assert!(
        wait_until(Duration::from_secs(5), || workers
            .iter()
            .all(|&w| !pid_alive(w))),
        "workers {workers:?} still alive after SIGINT"
    );
    assert!(
        wait_until(Duration::from_secs(5), || port_is_free(port)),
        "port {port} still bound after SIGINT shutdown"
    );
}

/// processes = 3 gives exactly three workers, all serving.
#[test]
fn three_processes_three_workers() {
    let _wd = watchdog("three_processes_three_workers", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let cfg = config(port, None, "").replace("processes = 1", "processes = 3");
    let server = Server::start(env.dir(), &cfg, port);

    let workers = server.wait_workers(3, Duration::from_secs(10));
    // Still exactly three a moment later (no extra forks, no crash loop).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        server.workers(),
        workers,
        "worker set changed without cause"
    );

    let out = curl(&env.certs, port, "/").run();
    assert_eq!(out.status, Some(200), "{out:?}");
    let pid = out
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("worker-pid:").map(|p| p.trim().to_string()))
        .and_then(|p| p.parse::<i32>().ok());
    assert!(
        pid.map(|p| workers.contains(&p)).unwrap_or(false),
        "answer should come from one of {workers:?}: {out:?}"
    );
}
