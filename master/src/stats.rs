//! The stats server: a thread accepts connections on the `stats` address and asks the master
//! loop (over a channel) for a snapshot, as JSON (uWSGI stats-server style) or, for
//! `GET /metrics`, Prometheus text. The thread never logs: a stderr lock it held at fork time
//! would deadlock the child.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};

/// How long a client may take to send an HTTP request line before it gets raw JSON.
const SNIFF: Duration = Duration::from_millis(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Raw JSON on a bare TCP connection, as uWSGI's stats server does.
    RawJson,
    HttpJson,
    Prometheus,
}

pub struct Request {
    pub format: Format,
    pub reply: Sender<String>,
}

#[derive(Debug, Clone, Default)]
pub struct WorkerStat {
    pub id: usize,
    pub pid: i32,
    pub generation: u64,
    pub state: &'static str,
    pub requests: u64,
    pub bytes: u64,
    pub active_connections: u64,
    pub busy_ms: u64,
    pub running_secs: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub pid: u32,
    pub generation: u64,
    pub respawns: u64,
    pub listeners: Vec<SocketAddr>,
    pub workers: Vec<WorkerStat>,
    /// Including workers that are gone.
    pub total_requests: u64,
    pub total_bytes: u64,
}

pub fn serve(listener: TcpListener, tx: Sender<Request>) -> std::io::Result<()> {
    thread::Builder::new()
        .name("stats".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                // Errors here belong to one client; nothing to report.
                let _ = answer(stream, &tx);
            }
        })
        .map(drop)
}

fn answer(mut stream: TcpStream, tx: &Sender<Request>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(SNIFF))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let format = if head.is_empty() {
        Format::RawJson
    } else if head.starts_with(b"GET /metrics") {
        Format::Prometheus
    } else {
        Format::HttpJson
    };
    let (reply, rx) = bounded(1);
    tx.send(Request { format, reply })
        .map_err(std::io::Error::other)?;
    let body = rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(std::io::Error::other)?;
    let content_type = match format {
        Format::RawJson => return stream.write_all(body.as_bytes()),
        Format::HttpJson => "application/json",
        Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

pub fn render(s: &Snapshot, format: Format) -> String {
    match format {
        Format::RawJson | Format::HttpJson => json(s),
        Format::Prometheus => prometheus(s),
    }
}

fn json(s: &Snapshot) -> String {
    let mut o = String::with_capacity(256 + 200 * s.workers.len());
    let _ = write!(
        o,
        "{{\"version\":\"{}\",\"pid\":{},\"generation\":{},\"respawns\":{},\"listeners\":[",
        env!("CARGO_PKG_VERSION"),
        s.pid,
        s.generation,
        s.respawns
    );
    for (i, l) in s.listeners.iter().enumerate() {
        let _ = write!(o, "{}{{\"name\":\"{l}\"}}", if i > 0 { "," } else { "" });
    }
    o.push_str("],\"workers\":[");
    for (i, w) in s.workers.iter().enumerate() {
        let _ = write!(
            o,
            "{}{{\"id\":{},\"pid\":{},\"generation\":{},\"status\":\"{}\",\"requests\":{},\"bytes\":{},\"active_connections\":{},\"busy_ms\":{},\"running_secs\":{}}}",
            if i > 0 { "," } else { "" },
            w.id,
            w.pid,
            w.generation,
            w.state,
            w.requests,
            w.bytes,
            w.active_connections,
            w.busy_ms,
            w.running_secs
        );
    }
    let active: u64 = s.workers.iter().map(|w| w.active_connections).sum();
    let _ = writeln!(
        o,
        "],\"totals\":{{\"workers\":{},\"requests\":{},\"bytes\":{},\"active_connections\":{}}}}}",
        s.workers.len(),
        s.total_requests,
        s.total_bytes,
        active
    );
    o
}

fn prometheus(s: &Snapshot) -> String {
    let mut o = String::with_capacity(1024 + 400 * s.workers.len());
    let mut family = |name: &str, kind: &str, help: &str, rows: Vec<(String, u64)>| {
        let _ = writeln!(o, "# HELP uwsgi_master_{name} {help}");
        let _ = writeln!(o, "# TYPE uwsgi_master_{name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(o, "uwsgi_master_{name}{labels} {v}");
        }
    };
    let per_worker = |f: &dyn Fn(&WorkerStat) -> u64| -> Vec<(String, u64)> {
        s.workers
            .iter()
            .map(|w| {
                (
                    format!(
                        "{{worker=\"{}\",pid=\"{}\",generation=\"{}\"}}",
                        w.id, w.pid, w.generation
                    ),
                    f(w),
                )
            })
            .collect()
    };
    family(
        "generation",
        "gauge",
        "Current worker generation.",
        vec![(String::new(), s.generation)],
    );
    family(
        "workers",
        "gauge",
        "Live worker processes.",
        vec![(String::new(), s.workers.len() as u64)],
    );
    family(
        "respawns_total",
        "counter",
        "Workers respawned after dying.",
        vec![(String::new(), s.respawns)],
    );
    family(
        "requests_total",
        "counter",
        "Requests served, including by workers now gone.",
        vec![(String::new(), s.total_requests)],
    );
    family(
        "bytes_total",
        "counter",
        "Response bytes sent, including by workers now gone.",
        vec![(String::new(), s.total_bytes)],
    );
    family(
        "worker_requests",
        "gauge",
        "Requests served by this worker process.",
        per_worker(&|w| w.requests),
    );
    family(
        "worker_bytes",
        "gauge",
        "Response bytes sent by this worker process.",
        per_worker(&|w| w.bytes),
    );
    family(
        "worker_active_connections",
        "gauge",
        "Open client connections.",
        per_worker(&|w| w.active_connections),
    );
    family(
        "worker_busy_milliseconds",
        "gauge",
        "Longest time one thread has spent on its current request.",
        per_worker(&|w| w.busy_ms),
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            pid: 10,
            generation: 2,
            respawns: 1,
            listeners: vec!["127.0.0.1:8443".parse().expect("addr")],
            workers: vec![WorkerStat {
                id: 1,
                pid: 11,
                generation: 2,
                state: "idle",
                requests: 5,
                ..Default::default()
            }],
            total_requests: 7,
            total_bytes: 100,
        }
    }

    #[test]
    fn json_lists_workers_and_totals() {
        let j = json(&sample());
        assert!(
            j.contains("\"workers\":[{\"id\":1,\"pid\":11,\"generation\":2"),
            "{j}"
        );
        assert!(
            j.contains("\"totals\":{\"workers\":1,\"requests\":7"),
            "{j}"
        );
        assert!(j.contains("{\"name\":\"127.0.0.1:8443\"}"), "{j}");
    }

    #[test]
    fn prometheus_has_help_type_and_samples() {
        let p = prometheus(&sample());
        assert!(p.contains(
            "# TYPE uwsgi_master_requests_total counter\nuwsgi_master_requests_total 7\n"
        ));
        assert!(
            p.contains("uwsgi_master_worker_requests{worker=\"1\",pid=\"11\",generation=\"2\"} 5")
        );
    }
}
