//! Configuration: reading every source (TOML files, uWSGI ini files, command-line flags),
//! merging them in order, and converting the result into the master's and the worker's
//! settings.

mod de;
mod https;
mod raw;
mod text;
mod tls;
mod uwsgi_options;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

pub use raw::RawConfig;
use raw::{HttpsValue, OneOrMany};
pub use text::{flag_takes_value, Setting};
pub use uwsgi_options::short_option;

use worker::{
    BackendAddr, ListenerSettings, RedirectSettings, Timeouts, TlsSettings, TlsVersion,
    VerifyClient,
};

/// `TCP_DEFER_ACCEPT`: a connection that sends nothing in this many seconds never wakes a
/// worker thread.
const DEFER_ACCEPT_SECS: u32 = 10;

/// Where the configuration comes from, in the order applied (later wins). Re-read on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub files: Vec<SourceFile>,
    /// Options given on the command line, in order; applied after every file, paths
    /// relative to `cwd`.
    pub flags: Vec<Setting>,
    pub cwd: PathBuf,
}

/// One configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceFile {
    Toml(PathBuf),
    /// A section of a uWSGI ini file (`uwsgi` unless `--ini file.ini:section`).
    Ini {
        path: PathBuf,
        section: String,
    },
}

impl SourceFile {
    /// `--ini file.ini` or `--ini file.ini:section`: a path that exists as written is taken
    /// whole, otherwise the part after its last `:` names the section (as uWSGI does).
    pub fn ini(spec: &str) -> SourceFile {
        if !Path::new(spec).exists() {
            if let Some((path, section)) = spec.rsplit_once(':') {
                if !path.is_empty() && !section.is_empty() && !section.contains('/') {
                    return SourceFile::Ini {
                        path: path.into(),
                        section: section.to_string(),
                    };
                }
            }
        }
        SourceFile::Ini {
            path: spec.into(),
            section: "uwsgi".to_string(),
        }
    }

    fn path(&self) -> &Path {
        match self {
            SourceFile::Toml(p) | SourceFile::Ini { path: p, .. } => p,
        }
    }
}

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub plan: master::Plan,
    pub worker: worker::Settings,
    pub log_level: Option<log::LevelFilter>,
}

/// Why one source could not be read.
enum SourceError {
    /// Options refused (unsupported, unknown, bad value): collected from every source into
    /// one error, so an operator sees all of them at once.
    Refused(String),
    Other(anyhow::Error),
}

impl Sources {
    /// Read and merge every source.
    pub fn load(&self) -> Result<Config> {
        let mut merged = RawConfig::default();
        let mut refused = Vec::new();
        for file in &self.files {
            let read = match file {
                SourceFile::Toml(path) => read_toml(&self.cwd.join(path)),
                SourceFile::Ini { path, section } => read_ini(&self.cwd.join(path), section),
            };
            match read {
                Ok(raw) => merged.merge(raw),
                Err(SourceError::Refused(msg)) => refused.push(msg),
                Err(SourceError::Other(e)) => return Err(e),
            }
        }
        if !self.flags.is_empty() {
            match text::to_raw(&self.flags) {
                Ok(mut flags) => {
                    flags
                        .resolve_paths(&self.cwd)
                        .map_err(anyhow::Error::msg)
                        .context("command line")?;
                    merged.merge(flags);
                }
                Err(lines) => refused.push(refusal("command line", &lines)),
            }
        }
        if !refused.is_empty() {
            bail!("{}", refused.join("\n"));
        }
        let origin = match self.files.last() {
            Some(f) => f.path().display().to_string(),
            None => "command line".to_string(),
        };
        convert(merged).with_context(|| origin)
    }
}

/// One source's refused options, one per line under a heading naming the source.
fn refusal(origin: &str, lines: &[String]) -> String {
    let mut msg = format!(
        "{origin}: {} option{} refused (see README, \"Migrating from uWSGI\"):",
        lines.len(),
        if lines.len() == 1 { "" } else { "s" }
    );
    for line in lines {
        msg.push_str("\n  ");
        msg.push_str(line);
    }
    msg
}

/// The folder relative paths in a file are resolved against.
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn read_toml(path: &Path) -> Result<RawConfig, SourceError> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))
        .map_err(SourceError::Other)?;
    worker::warn_if_world_writable(path);
    // Name every key we do not have (and what uWSGI feature it is) before serde stops at
    // the first one.
    if let Ok(table) = text.parse::<toml::Table>() {
        let lines: Vec<String> = table
            .keys()
            .filter(|k| raw::key_kind(k).is_none())
            .map(|k| format!("{k}: {}", text::refusal(k)))
            .collect();
        if !lines.is_empty() {
            return Err(SourceError::Refused(refusal(
                &path.display().to_string(),
                &lines,
            )));
        }
    }
    let mut raw: RawConfig = toml::from_str(&text)
        .map_err(|e| SourceError::Other(anyhow::anyhow!("{}: {}", path.display(), e.message())))?;
    raw.resolve_paths(folder_of(path))
        .map_err(|e| SourceError::Other(anyhow::anyhow!("{}: {e}", path.display())))?;
    Ok(raw)
}

/// A uWSGI ini section: relative paths are resolved against the ini file's folder.
fn read_ini(path: &Path, section: &str) -> Result<RawConfig, SourceError> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ini file {}", path.display()))
        .map_err(SourceError::Other)?;
    worker::warn_if_world_writable(path);
    let settings = text::parse_ini(&text, section, path)
        .map_err(|e| SourceError::Other(anyhow::anyhow!("{}: {e}", path.display())))?;
    let mut raw = text::to_raw(&settings)
        .map_err(|lines| SourceError::Refused(refusal(&path.display().to_string(), &lines)))?;
    raw.resolve_paths(folder_of(path))
        .map_err(|e| SourceError::Other(anyhow::anyhow!("{}: {e}", path.display())))?;
    Ok(raw)
}

fn convert(raw: RawConfig) -> Result<Config> {
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
        let what = format!("https entry {}", i + 1);
        let mut certs = tls::cert_keys(&t.cert, &t.key, &t.ocsp_response, &what)?.into_iter();
        let first = certs.next().context("no certificate")?;
        let sni = tls::sni(t.sni.as_deref().unwrap_or_default(), &what)?;
        let options = tls::ssl_options(raw.ssl_option.as_ref(), &t.ssl_option)
            .with_context(|| what.clone())?;
        listeners.push(ListenerSettings {
            socket,
            export_cert: t.export_cert.unwrap_or(export_all),
            proxy_protocol: t.proxy_protocol.or(raw.proxy_protocol).unwrap_or(false),
            tls: TlsSettings {
                cert: first.cert,
                key: first.key,
                ocsp_response: first.ocsp_response,
                extra_certs: certs.collect(),
                options,
                sni,
                sni_dir: t.sni_dir.or_else(|| raw.sni_dir.clone()),
                ticket_key_file: raw.ticket_key_file.clone(),
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
    let redirects = redirect_listeners(&raw, &mut sockets, shared_count, &listeners)?;
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
    // nginx's model: about one running thread per core over all workers. More runnable
    // threads per core lengthen the tail (keep-alive p99 on one core: 1 place 8.2-8.7 ms,
    // 2: 10.2, 4: 10.3-12.8, 8: 24.6), not the throughput.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let worker = worker::Settings {
        threads,
        running_threads: cores.div_ceil(processes).max(1),
        listeners,
        redirects,
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

/// `http-to-https` entries (an address, or `=N`: the N-th shared socket): plain-HTTP
/// listeners that redirect to the port of the first https listener.
fn redirect_listeners(
    raw: &RawConfig,
    sockets: &mut Vec<SocketAddr>,
    shared_count: usize,
    listeners: &[ListenerSettings],
) -> Result<Vec<RedirectSettings>> {
    let https_port = sockets[listeners[0].socket].port();
    let mut redirects: Vec<RedirectSettings> = Vec::new();
    for spec in raw
        .http_to_https
        .clone()
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
    {
        let socket = match spec.strip_prefix('=') {
            Some(n) => match n.parse::<usize>() {
                Ok(n) if n < shared_count => n,
                _ => bail!(
                    "http-to-https {spec:?}: no such shared socket ({shared_count} shared-socket entries)"
                ),
            },
            None => {
                let addr = parse_addr(&spec).with_context(|| format!("http-to-https {spec:?}"))?;
                match sockets.iter().position(|s| *s == addr) {
                    Some(n) => n,
                    None => {
                        sockets.push(addr);
                        sockets.len() - 1
                    }
                }
            }
        };
        if listeners.iter().any(|l| l.socket == socket) {
            bail!("http-to-https {spec:?}: that socket already serves https");
        }
        if !redirects.iter().any(|r| r.socket == socket) {
            redirects.push(RedirectSettings { socket, https_port });
        }
    }
    Ok(redirects)
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
            files: vec![SourceFile::Toml(path)],
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
    }

    #[test]
    fn ini_toml_and_flags_merge_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = dir.path().join("app.toml");
        std::fs::write(&toml, "processes = 2\nthreads = 4\nhttp-to = \"a.sock\"\n").expect("w");
        let sub = dir.path().join("site");
        std::fs::create_dir(&sub).expect("mkdir");
        let ini = sub.join("app.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nmaster = true\nshared-socket = 127.0.0.1:9443\nhttps = =0,foobar.crt,foobar.key,HIGH,!ca.crt\nthreads = 8\nhttp-to-https = 127.0.0.1:9080\n",
        )
        .expect("w");
        let c = Sources {
            files: vec![
                SourceFile::Toml(toml),
                SourceFile::ini(&ini.display().to_string()),
            ],
            flags: vec![Setting::flag("processes", Some("3"))],
            cwd: dir.path().to_path_buf(),
        }
        .load()
        .expect("valid");
        assert_eq!(c.plan.runtime.processes, 3, "the flag wins");
        assert_eq!(c.worker.threads, 8, "the later file wins");
        let tls = &c.worker.listeners[0].tls;
        assert_eq!(
            tls.cert,
            sub.join("foobar.crt"),
            "relative to the ini's folder"
        );
        assert_eq!(tls.client_ca.as_deref(), Some(sub.join("ca.crt").as_path()));
        assert_eq!(tls.verify_client, VerifyClient::Required);
        assert_eq!(
            c.worker.backends,
            [BackendAddr::UwsgiUnix(dir.path().join("a.sock"))]
        );
        assert_eq!(
            c.plan.restart.sockets,
            [
                "127.0.0.1:9443".parse().expect("a"),
                "127.0.0.1:9080".parse().expect("a")
            ]
        );
        assert_eq!(
            c.worker.redirects,
            [RedirectSettings {
                socket: 1,
                https_port: 9443
            }]
        );
    }

    #[test]
    fn every_refused_option_of_every_source_in_one_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ini = dir.path().join("app.ini");
        std::fs::write(
            &ini,
            "[uwsgi]\nwsgi-file = app.py\nharakiri-verbose = true\nhttps = 127.0.0.1:1,a,b\n",
        )
        .expect("w");
        let toml = dir.path().join("app.toml");
        std::fs::write(&toml, "vacuum = true\nnonsense = 1\n").expect("w");
        let err = Sources {
            files: vec![
                SourceFile::ini(&ini.display().to_string()),
                SourceFile::Toml(toml),
            ],
            flags: vec![Setting::flag("module", Some("app:app"))],
            cwd: dir.path().to_path_buf(),
        }
        .load()
        .expect_err("refused");
        let msg = format!("{err:#}");
        for needle in [
            "app.ini: 2 options refused",
            "wsgi-file (line 2): not supported: uWSGI's Python application server",
            "harakiri-verbose (line 3): not supported",
            "app.toml: 2 options refused",
            "vacuum: not supported",
            "nonsense: unknown option",
            "command line: 1 option refused",
            "--module: not supported",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in:\n{msg}");
        }
    }

    #[test]
    fn http_to_https_errors() {
        let err =
            load_str("https = [\"127.0.0.1:9443,a,b\"]\nhttp-to-https = \"127.0.0.1:9443\"\n")
                .expect_err("same socket");
        assert!(
            format!("{err:#}").contains("already serves https"),
            "{err:#}"
        );
        let err = load_str("https = [\"127.0.0.1:9443,a,b\"]\nhttp-to-https = \"=0\"\n")
            .expect_err("no shared socket");
        assert!(
            format!("{err:#}").contains("no such shared socket"),
            "{err:#}"
        );
        let c = load_str(
            "shared-socket = [\"127.0.0.1:443\", \"127.0.0.1:80\"]\nhttps = \"=0,a,b\"\nhttp-to-https = [\"=1\", \"127.0.0.1:80\"]\n",
        )
        .expect("valid");
        assert_eq!(
            c.worker.redirects,
            [RedirectSettings {
                socket: 1,
                https_port: 443
            }]
        );
    }
}
