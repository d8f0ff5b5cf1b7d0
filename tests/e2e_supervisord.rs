//! Under real supervisord with contrib/supervisord.conf's program section
//! (only the binary, config and log paths replaced): start, stop, restart
//! and `signal HUP` work, and stop leaves no process behind. (SPEC §8, §10)

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::lifecycle::{count, read_text, stats_doc, Supervisord};
use common::ports::port_is_free;
use common::server::tls_probe;
use common::{children_of, config, curl, free_port, pid_alive, wait_until, watchdog, TestEnv};

const LIMIT: Duration = Duration::from_secs(300);
const CTL: Duration = Duration::from_secs(100);

fn contrib_program_section(bin: &str, config: &Path, log: &Path) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contrib/supervisord.conf");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut out = text.clone();
    for (from, to) in [
        ("/usr/local/bin/uwsgi-master", bin.to_string()),
        ("/etc/uwsgi-master/app.toml", config.display().to_string()),
        ("/var/log/uwsgi-master.log", log.display().to_string()),
    ] {
        assert!(
            out.contains(from),
            "contrib/supervisord.conf no longer contains {from:?}; this test replaces only \
             that path:\n{text}"
        );
        out = out.replace(from, &to);
    }
    assert!(
        out.contains("[program:uwsgi-master]"),
        "no [program:uwsgi-master] section:\n{text}"
    );
    out
}

/// The master started by supervisord (its uwsgi-master child).
fn master_pid(sup: &Supervisord) -> Option<i32> {
    sup.programs().into_iter().find(|&p| {
        std::fs::read_link(format!("/proc/{p}/exe"))
            .map(|e| {
                e.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("uwsgi-master"))
            })
            .unwrap_or(false)
    })
}

fn ctl_ok(sup: &Supervisord, args: &[&str], expect: &str) -> String {
    let (code, out) = sup.ctl(args, CTL);
    assert!(
        code == Some(0) && out.contains(expect),
        "supervisorctl {args:?}: exit {code:?}, expected {expect:?} in: {out}"
    );
    out
}

/// Wait until the service answers HTTPS (handshake + 200 from curl).
fn wait_serving(sup: &Supervisord, env: &TestEnv, port: u16, what: &str) -> i32 {
    assert!(
        wait_until(Duration::from_secs(30), || tls_probe(port, None).is_ok()),
        "{what}: nothing answers TLS on {port}; status: {}",
        sup.ctl(&["status"], CTL).1
    );
    let out = curl(&env.certs, port, "/").run();
    assert_eq!(out.status, Some(200), "{what}: {out:?}");
    let pid =
        master_pid(sup).unwrap_or_else(|| panic!("{what}: no uwsgi-master under supervisord"));
    // startsecs=2: STARTING, then RUNNING.
    let mut status = String::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            status = sup.ctl(&["status", "uwsgi-master"], CTL).1;
            status.contains("RUNNING")
        }),
        "{what}: status {status}"
    );
    assert_eq!(master_pid(sup), Some(pid), "{what}: the master changed");
    pid
}

/// After `stop`: nothing listens, no uwsgi-master under supervisord, the
/// old master and its workers are gone.
fn assert_stopped(sup: &Supervisord, port: u16, old: &[i32], what: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || port_is_free(port)),
        "{what}: port {port} still bound"
    );
    assert!(
        tls_probe(port, None).is_err(),
        "{what}: something still answers TLS on {port}"
    );
    assert_eq!(
        master_pid(sup),
        None,
        "{what}: a uwsgi-master is still a child of supervisord"
    );
    let left: Vec<i32> = old.iter().copied().filter(|&p| pid_alive(p)).collect();
    assert!(left.is_empty(), "{what}: processes left behind: {left:?}");
}

#[test]
fn supervisord_start_stop_restart_and_hup() {
    let _wd = watchdog("supervisord_start_stop_restart_and_hup", LIMIT);
    let env = TestEnv::new();
    let dir = env.dir().to_path_buf();
    let port = free_port();
    let stats = free_port();
    let app = dir.join("app.toml");
    std::fs::write(
        &app,
        config(port, None, &format!("stats = \"127.0.0.1:{stats}\"\n"))
            .replace("processes = 1", "processes = 2"),
    )
    .expect("write app.toml");
    let program_log = dir.join("uwsgi-master.log");
    let program = dir.join("uwsgi-master.conf");
    std::fs::write(
        &program,
        contrib_program_section(common::bin(), &app, &program_log),
    )
    .expect("write the program section");
    let conf = dir.join("supervisord.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "[unix_http_server]\n\
             file={d}/supervisor.sock\n\
             chmod=0700\n\
             \n\
             [supervisord]\n\
             logfile={d}/supervisord.log\n\
             pidfile={d}/supervisord.pid\n\
             childlogdir={d}\n\
             nodaemon=true\n\
             \n\
             [rpcinterface:supervisor]\n\
             supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\
             \n\
             [supervisorctl]\n\
             serverurl=unix://{d}/supervisor.sock\n\
             \n\
             [include]\n\
             files = {}\n",
            program.display()
        ),
    )
    .expect("write supervisord.conf");

    let sup = Supervisord::start(&dir, &conf);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (code, out) = sup.ctl(&["status"], CTL);
            code.is_some() && out.contains("uwsgi-master")
        }),
        "supervisord does not answer supervisorctl: {}",
        read_text(&dir.join("supervisord.log"))
    );

    // autostart=true: it comes up by itself.
    let first = wait_serving(&sup, &env, port, "autostart");
    let mut old = vec![first];
    old.extend(children_of(first));

    ctl_ok(&sup, &["stop", "uwsgi-master"], "stopped");
    assert_stopped(&sup, port, &old, "after stop");

    ctl_ok(&sup, &["start", "uwsgi-master"], "started");
    let second = wait_serving(&sup, &env, port, "after start");
    assert_ne!(second, first);

    let mut old = vec![second];
    old.extend(children_of(second));
    ctl_ok(&sup, &["restart", "uwsgi-master"], "started");
    let third = wait_serving(&sup, &env, port, "after restart");
    assert_ne!(third, second, "restart should run a new master");
    assert!(
        wait_until(Duration::from_secs(10), || old
            .iter()
            .all(|&p| !pid_alive(p))),
        "the master before restart or its workers survived: {:?}",
        old.iter().filter(|&&p| pid_alive(p)).collect::<Vec<_>>()
    );

    // signal HUP: a reload, same master, generation 2.
    assert_eq!(count(&read_text(&program_log), "reload done"), 0);
    ctl_ok(&sup, &["signal", "HUP", "uwsgi-master"], "signalled");
    assert!(
        wait_until(Duration::from_secs(15), || read_text(&program_log)
            .contains("reload done: generation 2 started")),
        "no reload after `supervisorctl signal HUP`; program log:\n{}",
        read_text(&program_log)
    );
    let mut gen = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            gen = stats_doc(stats).map(|d| d.int("generation")).unwrap_or(0);
            gen == 2
        }),
        "stats generation after signal HUP: {gen}"
    );
    assert_eq!(
        master_pid(&sup),
        Some(third),
        "HUP must not restart the master"
    );
    let out = curl(&env.certs, port, "/after-hup").run();
    assert_eq!(out.status, Some(200), "{out:?}");

    let mut old = vec![third];
    old.extend(children_of(third));
    ctl_ok(&sup, &["stop", "uwsgi-master"], "stopped");
    assert_stopped(&sup, port, &old, "after the final stop");
    let log = read_text(&program_log);
    assert!(
        !log.contains("SIGKILL") && !log.contains("died after"),
        "stop should be graceful: {log}"
    );
}
