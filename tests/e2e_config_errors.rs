//! Failed starts: exit code != 0 and stderr names the culprit. (SPEC §3 TLS
//! material, §4.1 unknown keys)

mod common;

use std::time::Duration;

use common::server::describe_status;
use common::{config, free_port, toml_str, watchdog, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(60);
const EXIT_DEADLINE: Duration = Duration::from_secs(20);

/// Start with `cfg`; the master must exit non-zero and its output must
/// contain at least one of `any_of`.
fn expect_failure(env: &TestEnv, cfg: &str, any_of: &[&str]) -> String {
    let mut server = Server::spawn(env.dir(), cfg);
    let st = server.expect_exit(EXIT_DEADLINE);
    let log = server.log();
    assert!(
        !st.success(),
        "uwsgi-master should fail to start, but exited with {}\n---- config ----\n{cfg}",
        describe_status(&st)
    );
    assert!(
        st.code().is_some(),
        "uwsgi-master should exit with an error code, not die by a signal: {}",
        describe_status(&st)
    );
    assert!(
        any_of.iter().any(|n| log.contains(n)),
        "the error output should name one of {any_of:?}\n---- config ----\n{cfg}"
    );
    log
}

fn https_config(port: u16, entry: &str) -> String {
    format!(
        "processes = 1\nhttps = [{}]\n",
        toml_str(&format!("127.0.0.1:{port},{entry}"))
    )
}

#[test]
fn key_not_matching_cert() {
    let _wd = watchdog("key_not_matching_cert", LIMIT);
    let env = TestEnv::new();
    std::fs::copy(&env.certs.client_key, env.path("wrong.key")).expect("copy client key");
    let cfg = https_config(free_port(), "server.crt,wrong.key");
    expect_failure(&env, &cfg, &["wrong.key", "server.crt"]);
}

#[test]
fn missing_cert_file() {
    let _wd = watchdog("missing_cert_file", LIMIT);
    let env = TestEnv::new();
    let cfg = https_config(free_port(), "missing-server.crt,server.key");
    expect_failure(&env, &cfg, &["missing-server.crt"]);
}

#[test]
fn missing_key_file() {
    let _wd = watchdog("missing_key_file", LIMIT);
    let env = TestEnv::new();
    let cfg = https_config(free_port(), "server.crt,missing-server.key");
    expect_failure(&env, &cfg, &["missing-server.key"]);
}

#[test]
fn missing_client_ca_file() {
    let _wd = watchdog("missing_client_ca_file", LIMIT);
    let env = TestEnv::new();
    let cfg = https_config(free_port(), "server.crt,server.key,HIGH,!missing-ca.crt");
    expect_failure(&env, &cfg, &["missing-ca.crt"]);
}

#[test]
fn bad_cipher_string() {
    let _wd = watchdog("bad_cipher_string", LIMIT);
    let env = TestEnv::new();
    let cfg = https_config(free_port(), "server.crt,server.key,NOT-A-CIPHER");
    expect_failure(&env, &cfg, &["NOT-A-CIPHER"]);
}

#[test]
fn unknown_config_key() {
    let _wd = watchdog("unknown_config_key", LIMIT);
    let env = TestEnv::new();
    let cfg = config(free_port(), None, "frobnicate-the-widgets = 1\n");
    expect_failure(&env, &cfg, &["frobnicate-the-widgets"]);
}

/// SPEC §4.1: unknown keys are errors that name the key *and the file*.
#[test]
fn unknown_config_key_names_the_file() {
    let _wd = watchdog("unknown_config_key_names_the_file", LIMIT);
    let env = TestEnv::new();
    let cfg = config(free_port(), None, "frobnicate-the-widgets = 1\n");
    let log = expect_failure(&env, &cfg, &["frobnicate-the-widgets"]);
    assert!(
        log.contains("app.toml"),
        "the unknown-key error should name the config file app.toml"
    );
}
