//! Configuration: reading every source (TOML files, command-line flags), merging them in
//! order, and converting the result into the master's and the worker's settings.

mod https;
mod raw;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use raw::RawConfig;
use raw::{HttpsValue, OneOrMany};

use worker::{BackendAddr, ListenerSettings, Timeouts, TlsSettings, TlsVersion, VerifyClient};

/// `TCP_DEFER_ACCEPT`: a connection that sends nothing in this many seconds never wakes a
/// worker thread.
const DEFER_ACCEPT_SECS: u32 = 10;

/// Where the configuration comes from, in the order applied (later wins). Re-read on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub files: Vec<PathBuf>,
    /// Keys given on the command line, already typed; paths relative to `cwd`.
    pub flags: Option<RawConfig>,
    pub cwd: PathBuf,
}

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub plan: master::Plan,
    pub worker: worker::Settings,
    pub log_level: Option<log::LevelFilter>,
}

impl Sources {
    /// Read and merge every source.
    pub fn load(&self) -> Result<Config> {
        let mut merged = RawConfig::default();
        for file in &self.files {
            merged.merge(read_toml(&self.cwd.join(file))?);
        }
        if let Some(flags) = &self.flags {
            let mut flags = flags.clone();
            flags
                .resolve_paths(&self.cwd)
                .map_err(anyhow::Error::msg)
                .context("command line")?;
            merged.merge(flags);
        }
        let origin = match self.files.last() {
            Some(f) => f.display().to_string(),
            None => "command line".to_string(),
        };
        convert(merged).with_context(|| origin)
    }
}

fn read_toml(path: &Path) -> Result<RawConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut raw: RawConfig = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let base = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    raw.resolve_paths(base)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(raw)
}

/// Keys the SPEC names that this version does not implement yet: an error, never silently
/// ignored (an operator who sets `harakiri` relies on it).
fn reject_unimplemented(raw: &RawConfig) -> Result<()> {
    let mut missing = Vec::new();
    let checks: [(&str, bool); 2] = [
        ("ticket-key-file", raw.ticket_key_file.is_some()),
        ("proxy-protocol", raw.proxy_protocol == Some(true)),
    ];
    for (key, set) in checks {
        if set {
            missing.push(key);
        }
    }
    if !missing.is_empty() {
        bail!("not implemented in this version: {}", missing.join(", "));
    }
    Ok(())
}

fn convert(raw: RawConfig) -> Result<Config> {
    reject_unimplemented(&raw)?;
    let mut sockets: Vec<SocketAddr> = raw
        .shared_socket
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|s| parse_addr(s).with_context(|| format!("shared-socket {s:?}")))
        .collect::<Result<_>>()?;
    let shared_count = sockets.len();
    let verify_depth = raw.ssl_verify_depth.unwrap_or(1);
    let export_all = raw.https_export_cert.unwrap_or(false);
    let mut listeners = Vec::new();
    for (i, entry) in raw
        .https
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let HttpsValue::Table(t) = entry else {
            bail!("https entry {}: not resolved", i + 1);
        };
        let socket = match t.socket.strip_prefix('=') {
            Some(n) => {
                let n: usize = n
                    .parse()
                    .with_context(|| format!("https entry {}: bad socket {:?}", i + 1, t.socket))?;
                if n >= shared_count {
                    bail!(
                        "https entry {}: socket ={n} but only {shared_count} shared-socket entries",
                        i + 1
                    );
                }
                n
            }
            None => {
                let addr = parse_addr(&t.socket)
                    .with_context(|| format!("https entry {}: socket {:?}", i + 1, t.socket))?;
                match sockets.iter().position(|s| *s == addr) {
                    Some(n) => n,
                    None => {
                        sockets.push(addr);
                        sockets.len() - 1
                    }
                }
            }
        };
        let verify_client = match t.verify_client.as_deref() {
            None if t.client_ca.is_some() => VerifyClient::Optional,
            None | Some("none") => VerifyClient::None,
            Some("optional") => VerifyClient::Optional,
            Some("required") => VerifyClient::Required,
            Some(other) => bail!(
                "https entry {}: verify-client {other:?}: expected none, optional or required",
                i + 1
            ),
        };
        if verify_client != VerifyClient::None && t.client_ca.is_none() {
            bail!("https entry {}: verify-client needs client-ca", i + 1);
        }
        let min_version = match t.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.0") => TlsVersion::Tls10,
            Some("1.1") => TlsVersion::Tls11,
            Some("1.3") => TlsVersion::Tls13,
            Some(other) => bail!(
                "https entry {}: min-version {other:?}: expected 1.0 to 1.3",
                i + 1
            ),
        };
        listeners.push(ListenerSettings {
            socket,
            export_cert: t.export_cert.unwrap_or(export_all),
            tls: TlsSettings {
                cert: t.cert,
                key: t.key,
                ciphers: t.ciphers,
                ciphersuites: t.ciphersuites,
                client_ca: t.client_ca,
                verify_client,
                min_version,
                verify_depth,
                session_context: raw.https_session_context.clone(),
            },
        });
    }
    if listeners.is_empty() {
        bail!("no https entry: nothing to serve (set https = [\"127.0.0.1:8443,server.crt,server.key\"])");
    }
    let backends = raw
        .http_to
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .map(|t| parse_backend(t))
        .collect::<Result<Vec<_>>>()?;
    let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
    let processes = match raw.processes {
        Some(0) => bail!("processes must be at least 1"),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let stats = raw
        .stats
        .as_deref()
        .map(|s| parse_addr(s).with_context(|| format!("stats {s:?}")))
        .transpose()?;
    let threads = match raw.threads {
        Some(0) => bail!("threads must be at least 1"),
        Some(n) if n > master::MAX_THREADS => {
            bail!("threads {n} is more than {}", master::MAX_THREADS)
        }
        Some(n) => n,
        None => 64,
    };
    let buffer_size = raw.buffer_size.unwrap_or(16384);
    if buffer_size < 1024 {
        bail!("buffer-size {buffer_size} is too small (at least 1024)");
    }
    let log_level = raw
        .log_level
        .as_deref()
        .map(|l| {
            l.parse::<log::LevelFilter>().map_err(|_| {
                anyhow::anyhow!("log-level {l:?}: expected error, warn, info, debug or trace")
            })
        })
        .transpose()?;
    let plan = master::Plan {
        restart: master::RestartSettings {
            sockets,
            listen_backlog: raw.listen.unwrap_or(1024),
            uid: raw.uid.map(raw::NameOrId::into_string),
            gid: raw.gid.map(raw::NameOrId::into_string),
            pidfile: raw.pidfile,
            master_as_root: raw.master_as_root.unwrap_or(false),
            defer_accept_secs: DEFER_ACCEPT_SECS,
            stats,
        },
        runtime: master::RuntimeSettings {
            processes,
            reload_mercy: secs(raw.reload_mercy, 60),
            harakiri: raw.harakiri.filter(|&h| h > 0).map(Duration::from_secs),
            log_file: raw.log_file,
        },
    };
    let worker = worker::Settings {
        threads,
        listeners,
        backends,
        timeouts: Timeouts {
            handshake: secs(raw.handshake_timeout, 10),
            headers: secs(raw.http_headers_timeout, 10),
            keepalive: secs(raw.http_keepalive, 15),
            backend: secs(raw.http_timeout, 60),
            connect: secs(raw.http_connect_timeout, 5),
        },
        buffer_size,
        max_body: raw.max_body,
        chunked_input_limit: raw.chunked_input_limit.unwrap_or(1 << 20),
        max_requests: raw.max_requests.filter(|&m| m > 0),
        access_log: raw.access_log.unwrap_or(false),
    };
    Ok(Config {
        plan,
        worker,
        log_level,
    })
}

/// `1.2.3.4:443`, `[::]:443`, `:443` (all IPv4 interfaces, as uWSGI), or `localhost:443`.
fn parse_addr(s: &str) -> Result<SocketAddr> {
    if let Some(port) = s.strip_prefix(':') {
        return Ok(format!("0.0.0.0:{port}").parse()?);
    }
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    s.to_socket_addrs()
        .context("not an address")?
        .next()
        .context("resolves to no address")
}

/// `/path.sock` or `unix:/path` (uwsgi over a unix socket), `host:port` (uwsgi over TCP),
/// `http://host:port` and `http+unix:/path` (plain HTTP/1.1).
fn parse_backend(t: &str) -> Result<BackendAddr> {
    if let Some(path) = t.strip_prefix("http+unix:") {
        return Ok(BackendAddr::HttpUnix(path.into()));
    }
    if let Some(rest) = t.strip_prefix("http://") {
        let hostport = rest.trim_end_matches('/');
        if hostport.contains('/') || !hostport.contains(':') {
            bail!("http-to {t:?}: expected http://host:port (no path)");
        }
        return Ok(BackendAddr::HttpTcp(hostport.to_string()));
    }
    if let Some(path) = t.strip_prefix("unix:") {
        return Ok(BackendAddr::UwsgiUnix(path.into()));
    }
    if t.contains("://") {
        bail!("http-to {t:?}: only http:// URLs are supported (TLS to backends is not)");
    }
    if is_unix_path(t) {
        return Ok(BackendAddr::UwsgiUnix(t.into()));
    }
    Ok(BackendAddr::UwsgiTcp(t.to_string()))
}

/// A uwsgi backend written as a path (as uWSGI reads it): anything that is not `host:port`
/// or a URL.
pub(crate) fn is_unix_path(t: &str) -> bool {
    let host_port = t
        .rsplit_once(':')
        .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
    !t.contains("://") && !t.starts_with("unix:") && !t.starts_with("http+unix:") && !host_port
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("app.toml");
        std::fs::write(&path, text)?;
        Sources {
            files: vec![path],
            ..Default::default()
        }
        .load()
    }

    #[test]
    fn flat_file_with_shared_sockets_and_compact_https() {
        let c = load_str(
            r#"
processes = 2
shared-socket = ["127.0.0.1:8443", "[::1]:8443"]
https = ["=0,foobar.crt,foobar.key,HIGH,!ca.crt", "=1,foobar.crt,foobar.key"]
http-to = "app.sock"
"#,
        )
        .expect("valid");
        assert_eq!(c.plan.runtime.processes, 2);
        assert_eq!(c.plan.restart.sockets.len(), 2);
        let l = &c.worker.listeners[0];
        assert_eq!(l.socket, 0);
        assert_eq!(l.tls.verify_client, VerifyClient::Required);
        assert!(l.tls.cert.is_absolute() || l.tls.cert.starts_with("/"));
        assert!(
            matches!(&c.worker.backends[0], BackendAddr::UwsgiUnix(p) if p.ends_with("app.sock"))
        );
    }

    #[test]
    fn direct_addresses_are_bound_once() {
        let c = load_str(
            r#"
https = ["127.0.0.1:9443,a.crt,a.key", "127.0.0.1:9443,b.crt,b.key"]
http-to = ["127.0.0.1:3031", "unix:/tmp/x.sock"]
"#,
        )
        .expect("valid");
        assert_eq!(c.plan.restart.sockets.len(), 1);
        assert_eq!(
            c.worker.backends[0],
            BackendAddr::UwsgiTcp("127.0.0.1:3031".into())
        );
    }

    #[test]
    fn table_form() {
        let c = load_str(
            r#"
[[https]]
socket = "127.0.0.1:9443"
cert = "a.crt"
key = "a.key"
client-ca = "ca.crt"
verify-client = "required"
min-version = "1.3"
"#,
        )
        .expect("valid");
        assert_eq!(c.worker.listeners[0].tls.min_version, TlsVersion::Tls13);
        assert_eq!(
            c.worker.listeners[0].tls.verify_client,
            VerifyClient::Required
        );
    }

    #[test]
    fn errors_name_the_key_and_the_file() {
        let err = load_str("bogus-key = 1\nhttps = []\n").expect_err("unknown key");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("bogus-key") && msg.contains("app.toml"),
            "{msg}"
        );
        let err = load_str("processes = \"many\"\n").expect_err("bad type");
        assert!(format!("{err:#}").contains("app.toml"), "{err:#}");
        let err = load_str("https = [\"=3,a.crt,a.key\"]\n").expect_err("no such socket");
        assert!(format!("{err:#}").contains("=3"), "{err:#}");
        let err = load_str("https = [\"127.0.0.1:1,a,b\"]\nproxy-protocol = true\n")
            .expect_err("unimplemented");
        assert!(format!("{err:#}").contains("proxy-protocol"), "{err:#}");
    }
}
