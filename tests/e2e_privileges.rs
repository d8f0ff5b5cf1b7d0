//! Privilege drop: a privileged port bound as root, then master and workers
//! run as nobody:nogroup with no supplementary root group. (SPEC §3)

mod common;

use std::time::Duration;

use common::{curl, free_low_port, proc_status, toml_str, watchdog, Server, TestEnv};
use nix::unistd::{Group, User};

const LIMIT: Duration = Duration::from_secs(120);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn nobody_nogroup() -> (u32, u32) {
    let uid = User::from_name("nobody")
        .expect("look up user nobody")
        .expect("user nobody exists")
        .uid
        .as_raw();
    let gid = Group::from_name("nogroup")
        .expect("look up group nogroup")
        .expect("group nogroup exists")
        .gid
        .as_raw();
    (uid, gid)
}

/// `uid_line`/`gid_line` are the TOML lines, e.g. `uid = "nobody"`.
fn run_dropped(test: &str, uid_line: &str, gid_line: &str) {
    if !is_root() {
        eprintln!(
            "SKIP {test}: needs root (euid != 0) to bind a port below 1024 and drop privileges"
        );
        return;
    }
    let _wd = watchdog(test, LIMIT);
    let (uid, gid) = nobody_nogroup();
    let env = TestEnv::new();
    env.certs
        .make_readable_by_group(gid)
        .expect("make TLS files readable by nogroup");

    let port = free_low_port();
    let cfg = format!(
        "processes = 2\nthreads = 4\n{uid_line}\n{gid_line}\nhttps = [{}]\n",
        toml_str(&format!("127.0.0.1:{port},server.crt,server.key"))
    );
    let server = Server::start(env.dir(), &cfg, port);

    let out = curl(&env.certs, port, "/whoami").run();
    assert_eq!(
        out.status,
        Some(200),
        "GET on privileged port {port}: {out:?}"
    );
    assert!(out.text().contains("built-in responder"), "{out:?}");

    let workers = server.wait_workers(2, Duration::from_secs(10));
    let served_by = out
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("worker-pid:").map(|p| p.trim().to_string()))
        .and_then(|p| p.parse::<i32>().ok());
    assert!(
        served_by.map(|p| workers.contains(&p)).unwrap_or(false),
        "built-in responder's worker-pid {served_by:?} should be one of the workers {workers:?}: {out:?}"
    );

    let mut pids = vec![("master", server.pid)];
    pids.extend(workers.iter().map(|&w| ("worker", w)));
    for (role, pid) in pids {
        let st = proc_status(pid).unwrap_or_else(|| panic!("{role} {pid} vanished"));
        assert_eq!(
            st.uid, [uid; 4],
            "{role} {pid}: Uid (real, effective, saved, fs) should all be nobody ({uid}): {st:?}"
        );
        assert_eq!(
            st.gid, [gid; 4],
            "{role} {pid}: Gid (real, effective, saved, fs) should all be nogroup ({gid}): {st:?}"
        );
        assert!(
            !st.groups.contains(&0),
            "{role} {pid}: supplementary groups still contain root (0): {st:?}"
        );
    }
}

#[test]
fn drops_to_nobody_by_name() {
    run_dropped(
        "drops_to_nobody_by_name",
        "uid = \"nobody\"",
        "gid = \"nogroup\"",
    );
}

#[test]
fn drops_to_nobody_by_number() {
    if !is_root() {
        eprintln!("SKIP drops_to_nobody_by_number: needs root");
        return;
    }
    let (uid, gid) = nobody_nogroup();
    run_dropped(
        "drops_to_nobody_by_number",
        &format!("uid = {uid}"),
        &format!("gid = {gid}"),
    );
}
