//! The stats server: JSON per connection (raw and over HTTP) and Prometheus
//! text at `GET /metrics`, checked against the master's real children and
//! with real parsers (Python's json, prometheus_client). (SPEC §3
//! scoreboard, §8)

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::lifecycle::{
    count, prometheus_parse, python_json_check, stats_http, stats_raw, stats_workers, wait_count,
    Json, PromSample, StatsWorker,
};
use common::{children_of, config, curl, free_port, wait_until, watchdog, Server, TestEnv};

const LIMIT: Duration = Duration::from_secs(180);

/// Raw JSON, checked strictly, parsed.
fn json_doc(stats: u16) -> (String, Json) {
    let text = stats_raw(stats).unwrap_or_else(|e| panic!("stats: {e}"));
    python_json_check(&text).unwrap_or_else(|e| panic!("stats is not valid JSON: {e}\n{text}"));
    let doc = Json::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (text, doc)
}

/// Poll the stats until its workers are exactly the master's children,
/// all of generation `gen`; returns them.
fn wait_stats_match(server: &Server, stats: u16, gen: i64, n: usize) -> Vec<StatsWorker> {
    let mut last = (Vec::new(), Vec::new());
    let ok = wait_until(Duration::from_secs(20), || {
        let children = children_of(server.pid);
        let Ok(text) = stats_raw(stats) else {
            return false;
        };
        let Ok(doc) = Json::parse(&text) else {
            return false;
        };
        let workers = stats_workers(&doc);
        let mut pids: Vec<i32> = workers.iter().map(|w| w.pid).collect();
        pids.sort_unstable();
        let ok = pids == children
            && children.len() == n
            && workers.iter().all(|w| w.generation == gen)
            && doc.int("generation") == gen;
        last = (workers, children);
        ok
    });
    assert!(
        ok,
        "stats workers {:?} should be the master's {n} children {:?}, generation {gen}",
        last.0, last.1
    );
    last.0
}

fn family<'a>(samples: &'a [PromSample], sample_name: &str) -> Vec<&'a PromSample> {
    samples.iter().filter(|s| s.name == sample_name).collect()
}

fn metrics(stats: u16) -> (String, Vec<PromSample>) {
    let a = stats_http(stats, "/metrics").unwrap_or_else(|e| panic!("GET /metrics: {e}"));
    assert_eq!(a.status, 200, "{a:?}");
    let ct = a.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "Prometheus text needs Content-Type text/plain; version=0.0.4, got {ct:?}"
    );
    let samples = prometheus_parse(&a.body).unwrap_or_else(|e| {
        panic!(
            "/metrics does not parse as Prometheus text: {e}\n{}",
            a.body
        )
    });
    (a.body, samples)
}

fn single(samples: &[PromSample], name: &str) -> f64 {
    let f = family(samples, name);
    assert_eq!(f.len(), 1, "one sample {name} expected: {f:?}");
    f[0].value
}

/// Acceptance 8: the JSON lists every worker with pid and generation
/// matching the master's children; `/metrics` parses with prometheus_client;
/// after a SIGHUP the generation is 2 everywhere.
#[test]
fn stats_json_and_prometheus_follow_the_workers() {
    let _wd = watchdog("stats_json_and_prometheus_follow_the_workers", LIMIT);
    let env = TestEnv::new();
    let port = free_port();
    let stats = free_port();
    let cfg = config(
        port,
        None,
        &format!("reload-mercy = 30\nstats = \"127.0.0.1:{stats}\"\n"),
    )
    .replace("processes = 1", "processes = 2");
    let server = Server::start(env.dir(), &cfg, port);
    server.wait_workers(2, Duration::from_secs(10));

    for i in 0..5 {
        let out = curl(&env.certs, port, &format!("/count/{i}")).run();
        assert_eq!(out.status, Some(200), "{out:?}");
    }

    // Raw JSON (uWSGI stats-server style).
    let workers = wait_stats_match(&server, stats, 1, 2);
    let (text, doc) = json_doc(stats);
    assert_eq!(doc.int("pid"), server.pid as i64, "{text}");
    assert_eq!(doc.int("generation"), 1, "{text}");
    assert!(doc.at("version").as_str().is_some(), "{text}");
    assert_eq!(doc.int("respawns"), 0, "{text}");
    let listeners: Vec<&str> = doc
        .at("listeners")
        .as_array()
        .expect("listeners array")
        .iter()
        .filter_map(|l| l.get("name").and_then(Json::as_str))
        .collect();
    assert_eq!(listeners, vec![format!("127.0.0.1:{port}")], "{text}");
    let ids: BTreeSet<i64> = workers.iter().map(|w| w.id).collect();
    assert_eq!(ids, BTreeSet::from([1, 2]), "worker ids: {workers:?}");
    for w in &stats_workers(&doc) {
        assert!(
            ["idle", "busy", "stopping"].contains(&w.status.as_str()),
            "{w:?}"
        );
    }
    for w in doc.at("workers").as_array().expect("workers array") {
        for key in ["bytes", "active_connections", "busy_ms", "running_secs"] {
            assert!(w.int(key) >= 0, "{key} in {w:?}");
        }
    }
    let totals = doc.at("totals");
    assert_eq!(totals.int("workers"), 2, "{text}");
    let requests: i64 = stats_workers(&doc).iter().map(|w| w.requests).sum();
    // The readiness probe made no request; our 5 curls did.
    assert!(
        totals.int("requests") >= 5 && requests >= 5,
        "5 requests were made: {text}"
    );
    assert!(totals.int("bytes") > 0, "{text}");

    // The same JSON over HTTP.
    let a = stats_http(stats, "/").unwrap_or_else(|e| panic!("GET /: {e}"));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(
        a.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{a:?}"
    );
    python_json_check(&a.body).unwrap_or_else(|e| panic!("{e}\n{}", a.body));
    let http_doc = Json::parse(&a.body).expect("JSON over HTTP");
    assert_eq!(http_doc.int("pid"), server.pid as i64);

    // Prometheus text, parsed by prometheus_client.
    let (body, samples) = metrics(stats);
    for (name, kind) in [
        ("uwsgi_master_generation", "gauge"),
        ("uwsgi_master_workers", "gauge"),
        ("uwsgi_master_respawns_total", "counter"),
        ("uwsgi_master_requests_total", "counter"),
        ("uwsgi_master_bytes_total", "counter"),
        ("uwsgi_master_worker_requests", "gauge"),
        ("uwsgi_master_worker_bytes", "gauge"),
        ("uwsgi_master_worker_active_connections", "gauge"),
        ("uwsgi_master_worker_busy_milliseconds", "gauge"),
    ] {
        let f = family(&samples, name);
        assert!(!f.is_empty(), "no sample {name} in /metrics:\n{body}");
        assert!(
            f.iter().all(|s| s.kind == kind),
            "{name} should be a {kind}: {f:?}"
        );
    }
    assert_eq!(single(&samples, "uwsgi_master_generation"), 1.0);
    assert_eq!(single(&samples, "uwsgi_master_workers"), 2.0);
    assert!(single(&samples, "uwsgi_master_requests_total") >= 5.0);
    let children = children_of(server.pid);
    let mut metric_pids: Vec<i32> = family(&samples, "uwsgi_master_worker_requests")
        .iter()
        .map(|s| s.labels["pid"].parse().expect("pid label"))
        .collect();
    metric_pids.sort_unstable();
    assert_eq!(metric_pids, children, "per-worker samples vs children");
    for s in family(&samples, "uwsgi_master_worker_requests") {
        assert_eq!(s.labels.get("generation").map(String::as_str), Some("1"));
        assert!(s.labels.contains_key("worker"), "{s:?}");
    }

    // SIGHUP: generation 2, the new workers are the children.
    let before = count(&server.log(), "reload done");
    server.signal(libc::SIGHUP);
    assert!(wait_count(
        || server.log(),
        "reload done",
        before + 1,
        Duration::from_secs(10)
    ));
    let new_workers = wait_stats_match(&server, stats, 2, 2);
    assert!(
        new_workers
            .iter()
            .all(|w| !workers.iter().any(|o| o.pid == w.pid)),
        "generation 2 should be new processes: {workers:?} -> {new_workers:?}"
    );
    let (_, samples) = metrics(stats);
    assert_eq!(single(&samples, "uwsgi_master_generation"), 2.0);
    for s in family(&samples, "uwsgi_master_worker_requests") {
        assert_eq!(s.labels.get("generation").map(String::as_str), Some("2"));
    }
    // Totals never go backwards: requests of the retired workers still count.
    assert!(single(&samples, "uwsgi_master_requests_total") >= 5.0);

    // A killed worker is replaced and counted as a respawn.
    let victim = new_workers[0].pid;
    common::procs::kill(victim, libc::SIGKILL);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let c = children_of(server.pid);
            c.len() == 2 && !c.contains(&victim)
        }),
        "killed worker {victim} not replaced"
    );
    wait_stats_match(&server, stats, 2, 2);
    let (text, doc) = json_doc(stats);
    assert_eq!(doc.int("respawns"), 1, "{text}");
    let (_, samples) = metrics(stats);
    assert_eq!(single(&samples, "uwsgi_master_respawns_total"), 1.0);
}
