//! uWSGI options this product does not have, grouped by the uWSGI feature they belong to,
//! each group with what to do instead. Used to explain a refused option (SPEC §2, §4.3):
//! an operator migrating an ini file learns in one error everything that does not carry over.

/// A uWSGI feature we lack: the options that belong to it, and a short note.
struct Feature {
    note: &'static str,
    /// Options that take a value (`--socket /tmp/x.sock`).
    values: &'static [&'static str],
    /// Options that take none (`--enable-threads`).
    switches: &'static [&'static str],
}

const FEATURES: &[Feature] = &[
    Feature {
        note: "uWSGI's Python application server: run the app in uWSGI (or any app server) \
               and point http-to at its socket",
        values: &[
            "wsgi-file",
            "file",
            "wsgi",
            "module",
            "callable",
            "mount",
            "pythonpath",
            "python-path",
            "pp",
            "home",
            "virtualenv",
            "venv",
            "pyhome",
            "pymodule-alias",
            "import",
            "pyimport",
            "python-import",
            "py-autoreload",
            "python-autoreload",
            "paste",
            "ini-paste",
            "eval",
            "wsgi-env-behaviour",
            "spooler",
            "mule",
            "py-call-osafterfork",
            "py-program-name",
        ],
        switches: &[
            "single-interpreter",
            "manage-script-name",
            "lazy-apps",
            "lazy",
            "need-app",
            "wsgi-disable-file-wrapper",
            "py-tracebacker",
            "catch-exceptions",
            "honour-stdin",
        ],
    },
    Feature {
        note: "uWSGI's language plugins: the HTTPS router is built in here and nothing needs \
               loading; run the app in its own server behind http-to",
        values: &[
            "plugin",
            "plugins",
            "plugin-dir",
            "psgi",
            "rack",
            "php-docroot",
            "lua",
        ],
        switches: &["autoload"],
    },
    Feature {
        note: "uWSGI's application threads: our workers always run threads (threads = N); \
               drop it",
        values: &[],
        switches: &["enable-threads", "thunder-lock"],
    },
    Feature {
        note: "uWSGI's own application sockets: those belong to the app server; here http-to \
               names the backend and https (or shared-socket) the listeners",
        values: &[
            "socket",
            "uwsgi-socket",
            "http-socket",
            "http11-socket",
            "https-socket",
            "fastcgi-socket",
            "scgi-socket",
            "ssl-socket",
            "suwsgi-socket",
            "raw-socket",
            "protocol",
            "chmod-socket",
            "chown-socket",
            "umask",
            "abstract-socket",
            "socket-protocol",
            "zerg",
            "zerg-server",
        ],
        switches: &["reuse-port", "so-keepalive", "freebind"],
    },
    Feature {
        note: "uWSGI's plain-HTTP router: only HTTPS is served here; add an https entry, and \
               http-to-https to redirect plain HTTP",
        values: &[
            "http",
            "httprouter",
            "http-var",
            "http-fallback",
            "http-modifier1",
            "http-modifier2",
            "http-use-cache",
            "http-use-pattern",
            "http-use-base",
            "http-events",
            "http-subscription-server",
            "http-use-code-string",
            "http-use-socket",
            "http-gracetime",
            "http-stats",
            "http-stats-server",
            "http-ss",
            "http-harakiri",
            "http-stud-prefix",
            "http-resubscribe",
            "http-buffer-size",
            "http-manage-expect",
            "http-zerg",
            "http-uid",
            "http-gid",
        ],
        switches: &[
            "http-auto-chunked",
            "http-auto-gzip",
            "http-raw-body",
            "http-chunked-input",
            "http-cheap",
            "http-quiet",
            "http-server-name-as-http-host",
            "http-manage-source",
            "http-manage-rtsp",
        ],
    },
    Feature {
        note: "WebSockets: tunnelled after the backend's 101 without any option; drop it",
        values: &[],
        switches: &["http-websockets"],
    },
    Feature {
        note: "the router's own process count: our workers are the router; use processes",
        values: &["http-processes", "http-workers"],
        switches: &[],
    },
    Feature {
        note: "the keyval form of https: write the compact socket,cert,key[,ciphers[,[!]ca]] \
               form, or a [[https]] table in a TOML config",
        values: &["https2"],
        switches: &[],
    },
    Feature {
        note: "PROXY protocol on the router: use proxy-protocol",
        values: &[],
        switches: &["http-enable-proxy-protocol", "enable-proxy-protocol"],
    },
    Feature {
        note: "uWSGI's TLS tuning options: use the [[https]] table in a TOML config (ciphers, \
               ciphersuites, min-version, sni)",
        values: &[
            "ssl-sessions-timeout",
            "sni",
            "sni-regexp",
            "ssl-tmp-dir",
            "https-session-cache",
        ],
        switches: &[
            "ssl-verbose",
            "ssl-sessions-use-cache",
            "ssl-enable-tlsv1",
            "ssl-enable-sslv3",
        ],
    },
    Feature {
        note: "harakiri tracing: harakiri here always logs the worker it replaces; drop it",
        values: &["harakiri-graceful-timeout", "harakiri-graceful-signal"],
        switches: &["harakiri-verbose", "harakiri-no-arh", "harakiri-graceful"],
    },
    Feature {
        note: "uWSGI's logger: we log to stderr (log-level, access-log, log-file); let \
               supervisord or systemd collect it",
        values: &[
            "logto",
            "logto2",
            "logfile-chown",
            "logfile-chmod",
            "log-format",
            "logformat",
            "logger",
            "req-logger",
            "log-route",
            "log-encoder",
            "log-slow",
            "log-big",
            "log-maxsize",
            "log-backupname",
            "log-reopen",
            "log-drain",
            "log-filter",
            "logformat-strftime",
            "log-format-strftime",
            "log-x-forwarded-for",
        ],
        switches: &[
            "logdate",
            "log-date",
            "disable-logging",
            "log-4xx",
            "log-5xx",
            "log-master",
            "threaded-logger",
            "log-zero",
            "log-sendfile",
            "log-micros",
            "log-ioerror",
            "memory-report",
        ],
    },
    Feature {
        note: "uWSGI's daemon mode: run in the foreground under supervisord or systemd \
               (contrib/)",
        values: &["daemonize", "daemonize2"],
        switches: &[],
    },
    Feature {
        note: "SIGTERM is always a graceful stop here: drop it",
        values: &[],
        switches: &["die-on-term"],
    },
    Feature {
        note: "we create no unix sockets and remove the pidfile at exit: drop it",
        values: &[],
        switches: &["vacuum"],
    },
    Feature {
        note: "workers here never outlive the master (PR_SET_PDEATHSIG): drop it",
        values: &[],
        switches: &["no-orphans"],
    },
    Feature {
        note: "uWSGI's process tuning: the number of workers is fixed (processes; SIGTTIN and \
               SIGTTOU add or remove one)",
        values: &[
            "cheaper",
            "cheaper-initial",
            "cheaper-step",
            "cheaper-algo",
            "cheaper-overload",
            "cheaper-rss-limit-soft",
            "cheaper-rss-limit-hard",
            "idle",
            "cpu-affinity",
            "max-worker-lifetime",
            "reload-on-rss",
            "reload-on-as",
            "evil-reload-on-rss",
            "evil-reload-on-as",
            "min-worker-lifetime",
            "async",
            "ugreen",
            "gevent",
            "offload-threads",
            "procname",
            "procname-prefix",
            "procname-prefix-spaced",
            "procname-append",
            "procname-master",
        ],
        switches: &["die-on-idle", "auto-procname", "cheap"],
    },
    Feature {
        note: "uWSGI's reload triggers: send SIGHUP to the master (e.g. from your deploy \
               script or logrotate)",
        values: &[
            "touch-reload",
            "touch-chain-reload",
            "touch-workers-reload",
            "fs-reload",
            "fs-brutal-reload",
            "touch-logreopen",
            "master-fifo",
        ],
        switches: &["lazy-reload"],
    },
    Feature {
        note: "a worker reload here is governed by reload-mercy",
        values: &["worker-reload-mercy", "mule-reload-mercy"],
        switches: &[],
    },
    Feature {
        note: "request bodies stream here with bounded memory: drop it (max-body limits size)",
        values: &[
            "post-buffering",
            "post-buffering-bufsize",
            "body-read-warning",
        ],
        switches: &[],
    },
    Feature {
        note: "use max-body (bytes)",
        values: &["limit-post"],
        switches: &[],
    },
    Feature {
        note: "use http-timeout (backend reads) and http-headers-timeout",
        values: &["socket-timeout"],
        switches: &[],
    },
    Feature {
        note: "one pidfile, written before the privilege drop: use pidfile",
        values: &["pidfile2", "safe-pidfile", "safe-pidfile2"],
        switches: &[],
    },
    Feature {
        note: "uWSGI's Emperor: run one uwsgi-master per site under supervisord or systemd",
        values: &["emperor", "emperor-tyrant", "vassals-inherit", "vassal-sos"],
        switches: &[],
    },
    Feature {
        note: "uWSGI's sandboxing: run uwsgi-master under systemd's sandboxing options; \
               uid/gid drop privileges here",
        values: &[
            "chroot",
            "cap",
            "unshare",
            "jail",
            "namespace",
            "pivot-root",
            "chdir",
            "chdir2",
            "add-gid",
            "immediate-uid",
            "immediate-gid",
        ],
        switches: &["no-initgroups"],
    },
    Feature {
        note: "uWSGI's internal routing, caching and static files: serve those from the app \
               server or a web server behind http-to",
        values: &[
            "route",
            "route-if",
            "route-if-not",
            "route-run",
            "route-host",
            "route-uri",
            "final-route",
            "error-route",
            "response-route",
            "cache",
            "cache2",
            "static-map",
            "static-map2",
            "static-check",
            "check-static",
            "static-index",
            "static-expires",
            "offload",
            "add-header",
            "del-header",
            "collect-header",
            "pull-header",
            "static-skip-ext",
        ],
        switches: &["static-gzip-all", "static-safe"],
    },
    Feature {
        note: "stats are served by the master: use stats (JSON, and Prometheus text at \
               /metrics over HTTP)",
        values: &["stats-server", "stats-push"],
        switches: &[
            "stats-http",
            "stats-minified",
            "stats-no-cores",
            "stats-no-metrics",
        ],
    },
    Feature {
        note: "environment for applications: set it in the app server",
        values: &["env", "unenv"],
        switches: &["clear-environ"],
    },
    Feature {
        note: "uWSGI's config language (placeholders, includes, conditions): write the values \
               out; %d, %n, %s, %p, %e, %c, %(key) and $(ENV) are expanded in ini values",
        values: &[
            "set",
            "set-placeholder",
            "set-ph",
            "declare-option",
            "declare-option2",
            "for",
            "endfor",
            "if-env",
            "if-not-env",
            "if-exists",
            "if-not-exists",
            "if-file",
            "if-dir",
            "if-opt",
            "endif",
            "include",
            "inherit",
            "xml",
            "yaml",
            "yml",
            "json",
            "js",
            "sqlite3",
            "ldap",
        ],
        switches: &["show-config", "print", "cflags", "dot-h", "build-plugin"],
    },
    Feature {
        note: "unknown options are always errors here: drop it",
        values: &[],
        switches: &["strict"],
    },
    Feature {
        note: "uWSGI's per-socket tuning: the backlog is listen; TCP_NODELAY and \
               TCP_DEFER_ACCEPT are always on",
        values: &[
            "so-send-timeout",
            "so-write-timeout",
            "socket-send-buf",
            "socket-write-buf",
            "socket-recv-buf",
            "socket-read-buf",
        ],
        switches: &[
            "tcp-nodelay",
            "close-on-exec",
            "close-on-exec2",
            "no-defer-accept",
        ],
    },
    Feature {
        note: "uWSGI's signal framework and timers: not provided; use cron or systemd timers",
        values: &[
            "cron",
            "cron2",
            "unique-cron",
            "timer",
            "rbtimer",
            "signal",
            "attach-daemon",
            "attach-daemon2",
            "smart-attach-daemon",
            "hook-pre-app",
            "hook-post-fork",
            "exec-pre-app",
            "exec-post-app",
            "exec-as-root",
            "exec-as-user",
        ],
        switches: &[],
    },
];

/// The note for a uWSGI option we do not support, and whether it takes a value on the
/// command line; None when uWSGI has no such option either (as far as this table knows).
pub fn lookup(name: &str) -> Option<(&'static str, bool)> {
    FEATURES.iter().find_map(|f| {
        if f.values.contains(&name) {
            Some((f.note, true))
        } else if f.switches.contains(&name) {
            Some((f.note, false))
        } else {
            None
        }
    })
}

/// uWSGI's one-letter options and their long names (ours or not).
pub fn short_option(letter: char) -> Option<&'static str> {
    Some(match letter {
        'M' => "master",
        'p' => "processes",
        'l' => "listen",
        'b' => "buffer-size",
        't' => "harakiri",
        'R' => "max-requests",
        'T' => "enable-threads",
        'w' => "module",
        's' => "socket",
        'H' => "home",
        'd' => "daemonize",
        'L' => "disable-logging",
        'C' => "chmod-socket",
        'i' => "single-interpreter",
        'z' => "socket-timeout",
        'Q' => "spooler",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_options_have_notes_and_arity() {
        let (note, value) = lookup("wsgi-file").expect("known");
        assert!(
            note.contains("Python") && note.contains("http-to"),
            "{note}"
        );
        assert!(value);
        let (_, value) = lookup("harakiri-verbose").expect("known");
        assert!(!value);
        assert!(lookup("no-such-thing").is_none());
        // Ours are not in the table: they must never be reported as unsupported.
        for ours in [
            "https",
            "http-to",
            "shared-socket",
            "uid",
            "master",
            "http-to-https",
        ] {
            assert!(lookup(ours).is_none(), "{ours}");
        }
    }

    #[test]
    fn no_option_is_listed_twice() {
        let mut all: Vec<&str> = FEATURES
            .iter()
            .flat_map(|f| f.values.iter().chain(f.switches))
            .copied()
            .collect();
        all.sort_unstable();
        let len = all.len();
        all.dedup();
        assert_eq!(all.len(), len, "an option is in two groups");
        for name in all {
            assert!(
                crate::config::raw::key_kind(name).is_none(),
                "{name} is one of our keys"
            );
        }
    }
}
