//! Client certificates: mandatory (`!ca.crt`), optional (`ca.crt`), and the
//! `[[https]]` table form. (SPEC §4.1, §5 HTTPS_DN, §7)

mod common;

use std::path::Path;
use std::time::Duration;

use common::certs::CLIENT_DN;
use common::{curl, free_port, toml_str, var, watchdog, Backend, CurlOut, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(120);

fn flat_config(port: u16, http_to: &str, ca_field: &str) -> String {
    format!(
        "processes = 1\nthreads = 8\nhttps = [{}]\nhttp-to = {}\n",
        toml_str(&format!(
            "127.0.0.1:{port},server.crt,server.key,HIGH,{ca_field}"
        )),
        toml_str(http_to)
    )
}

fn get(env: &TestEnv, port: u16, path: &str, client: Option<(&Path, &Path)>) -> CurlOut {
    let c = curl(&env.certs, port, path).max_time(30);
    match client {
        Some(cc) => c.client_cert(cc).run(),
        None => c.run(),
    }
}

fn assert_rejected(out: &CurlOut, what: &str) {
    assert!(
        out.exit != 0 && out.status.is_none(),
        "{what}: expected the TLS layer to refuse (curl failure, no HTTP status), got {out:?}"
    );
}

fn assert_dn(backend: &Backend, path: &str, want: Option<&str>) {
    let v = backend.request_for(path).unwrap_or_else(|| {
        panic!(
            "backend saw no request for {path}; saw {:#?}",
            backend.requests()
        )
    });
    assert_eq!(
        var(&v, "HTTPS_DN"),
        want,
        "HTTPS_DN for {path}; all vars: {v:#?}"
    );
}

/// Shared checks for a listener that requires a client certificate.
fn check_required(env: &TestEnv, backend: &Backend, port: u16) {
    let out = get(env, port, "/nocert", None);
    assert_rejected(
        &out,
        "no client certificate on a listener that requires one",
    );

    let out = get(env, port, "/othercert", Some(env.certs.other_client()));
    assert_rejected(&out, "client certificate from an unrelated CA");

    let out = get(env, port, "/goodcert", Some(env.certs.client()));
    assert_eq!(
        out.status,
        Some(200),
        "client certificate from the CA: {out:?}"
    );
    assert_dn(backend, "/goodcert", Some(CLIENT_DN));
    assert!(
        out.text().contains(&format!("HTTPS_DN={CLIENT_DN}\n")),
        "{out:?}"
    );

    for p in ["/nocert", "/othercert"] {
        assert!(
            backend.request_for(p).is_none(),
            "a rejected client's request {p} reached the backend"
        );
    }
}

/// `127.0.0.1:P,server.crt,server.key,HIGH,!ca.crt`
#[test]
fn required_client_cert_compact_form() {
    let _wd = watchdog("required_client_cert_compact_form", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let _server = Server::start_with_client(
        env.dir(),
        &flat_config(port, &backend.http_to(), "!ca.crt"),
        port,
        env.certs.client(),
    );
    check_required(&env, &backend, port);
}

/// `127.0.0.1:P,server.crt,server.key,HIGH,ca.crt`: optional but verified.
#[test]
fn optional_client_cert_compact_form() {
    let _wd = watchdog("optional_client_cert_compact_form", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let _server = Server::start(
        env.dir(),
        &flat_config(port, &backend.http_to(), "ca.crt"),
        port,
    );

    let out = get(&env, port, "/nocert", None);
    assert_eq!(
        out.status,
        Some(200),
        "no client certificate (optional): {out:?}"
    );
    assert_dn(&backend, "/nocert", None);

    let out = get(&env, port, "/goodcert", Some(env.certs.client()));
    assert_eq!(
        out.status,
        Some(200),
        "client certificate from the CA: {out:?}"
    );
    assert_dn(&backend, "/goodcert", Some(CLIENT_DN));

    let out = get(&env, port, "/othercert", Some(env.certs.other_client()));
    assert_rejected(
        &out,
        "client certificate from an unrelated CA (optional mode)",
    );
    assert!(backend.request_for("/othercert").is_none());
}

/// `[[https]]` table with `verify-client = "required"`.
#[test]
fn required_client_cert_table_form() {
    let _wd = watchdog("required_client_cert_table_form", LIMIT);
    let env = TestEnv::new();
    let backend = Backend::unix(&env.path("app.sock"));
    let port = free_port();
    let cfg = format!(
        "processes = 1\nthreads = 8\nhttp-to = {}\n\n[[https]]\nsocket = {}\ncert = \"server.crt\"\nkey = \"server.key\"\nciphers = \"HIGH\"\nclient-ca = \"ca.crt\"\nverify-client = \"required\"\n",
        toml_str(&backend.http_to()),
        toml_str(&format!("127.0.0.1:{port}")),
    );
    let _server = Server::start_with_client(env.dir(), &cfg, port, env.certs.client());
    check_required(&env, &backend, port);
}
