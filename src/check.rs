//! `--check`: validate the configuration and every certificate, key and CA as the workers'
//! user would read them, print a summary, exit 0 or 1. Binds nothing.

use anyhow::{Context, Result};

use crate::config::Sources;

pub fn run(sources: &Sources) -> Result<String> {
    let config = sources.load()?;
    let restart = &config.plan.restart;
    let identity = master::Identity::resolve(restart.uid.as_deref(), restart.gid.as_deref())
        .context("uid/gid")?;
    let mut out = String::new();
    match (&identity, restart.master_as_root) {
        (Some(id), false) if master::current_is_root() => {
            // Read every file as the dropped master will on each reload.
            id.drop_privileges().context("privilege drop")?;
            out.push_str(&format!("files checked as uid {} gid {}\n", id.uid, id.gid));
        }
        (Some(id), _) => out.push_str(&format!("workers run as uid {} gid {}\n", id.uid, id.gid)),
        (None, _) if master::current_is_root() => {
            out.push_str("warning: no uid set: workers would run as root\n")
        }
        (None, _) => {}
    }
    let worker = &config.worker;
    for l in &worker.listeners {
        let addr = restart.sockets[l.socket];
        out.push_str(&format!(
            "https {addr}: cert {} ({}), key {}, client certificates {:?}{}\n",
            l.tls.cert.display(),
            worker::certificate_summary(&l.tls.cert).with_context(|| format!("https {addr}"))?,
            l.tls.key.display(),
            l.tls.verify_client,
            l.tls
                .client_ca
                .as_ref()
                .map(|ca| format!(" (CA {})", ca.display()))
                .unwrap_or_default(),
        ));
    }
    for r in &worker.redirects {
        out.push_str(&format!(
            "http-to-https {}: 301 to https port {}\n",
            restart.sockets[r.socket], r.https_port
        ));
    }
    worker::Server::build(worker.clone(), &restart.sockets)?;
    if worker.backends.is_empty() {
        out.push_str("http-to: none (built-in responder)\n");
    }
    for b in &worker.backends {
        out.push_str(&format!("http-to: {b}\n"));
    }
    out.push_str(&format!(
        "processes {}, threads {}, reload-mercy {}s\nconfiguration OK\n",
        config.plan.runtime.processes,
        worker.threads,
        config.plan.runtime.reload_mercy.as_secs()
    ));
    Ok(out)
}
