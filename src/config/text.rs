//! The sources written as uWSGI writes them: command-line flags (`--https X`, `--uid=nobody`,
//! `--master`) and ini files (`[uwsgi]`, `key = value`, repeated keys for lists). Both become
//! a list of [`Setting`]s, typed by key into a TOML table and deserialized into
//! [`RawConfig`], so they obey the same rules as a TOML file.

use std::path::Path;

use serde::Deserialize;

use super::raw::{key_kind, RawConfig, ValueKind};
use super::uwsgi_options;

/// One option as written: `--key value`, `--key`, or an ini line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// As written, without the leading dashes.
    pub key: String,
    /// None: a bare `--switch` (or an ini line with no `=`).
    pub value: Option<String>,
    /// The ini line; None on the command line.
    pub line: Option<usize>,
}

impl Setting {
    pub fn flag(key: &str, value: Option<&str>) -> Self {
        Self {
            key: key.to_string(),
            value: value.map(str::to_string),
            line: None,
        }
    }

    /// How an error names this setting: `--key` or `key (line N)`.
    fn place(&self) -> String {
        match self.line {
            Some(n) => format!("{} (line {n})", self.key),
            None => format!("--{}", self.key),
        }
    }
}

/// Whether `--name` takes the next argument as its value (our keys by kind, uWSGI's by its
/// table). None: an option neither we nor uWSGI (as far as we know) have.
pub fn flag_takes_value(name: &str) -> Option<bool> {
    if let Some((_, kind)) = key_kind(name) {
        return Some(kind != ValueKind::Bool);
    }
    uwsgi_options::lookup(name).map(|(_, value)| value)
}

/// Why a key was refused: one line of the error.
pub fn refusal(key: &str) -> String {
    match uwsgi_options::lookup(key) {
        Some((note, _)) => format!("not supported: {note}"),
        None => "unknown option".to_string(),
    }
}

/// Type every setting by its key and deserialize them into a [`RawConfig`]. Every refused
/// option and bad value is reported, each on its own line, not only the first.
pub fn to_raw(settings: &[Setting]) -> Result<RawConfig, Vec<String>> {
    let mut table = toml::Table::new();
    let mut problems = Vec::new();
    for s in settings {
        let Some((key, kind)) = key_kind(&s.key) else {
            problems.push(format!("{}: {}", s.place(), refusal(&s.key)));
            continue;
        };
        match typed(kind, s.value.as_deref()) {
            Ok(value) if kind == ValueKind::List => {
                match table
                    .entry(key)
                    .or_insert_with(|| toml::Value::Array(Vec::new()))
                {
                    toml::Value::Array(items) => items.push(value),
                    other => *other = toml::Value::Array(vec![value]),
                }
            }
            Ok(value) => {
                table.insert(key, value);
            }
            Err(e) => problems.push(format!("{}: {e}", s.place())),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    RawConfig::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        // Name the key: find the one that fails alone.
        let culprit = table.iter().find_map(|(k, v)| {
            let mut one = toml::Table::new();
            one.insert(k.clone(), v.clone());
            RawConfig::deserialize(toml::Value::Table(one))
                .err()
                .map(|e| format!("{k}: {}", e.message().trim()))
        });
        vec![culprit.unwrap_or_else(|| e.message().trim().to_string())]
    })
}

fn typed(kind: ValueKind, value: Option<&str>) -> Result<toml::Value, String> {
    let value = value.map(str::trim);
    match kind {
        ValueKind::Bool => match value.map(str::to_ascii_lowercase).as_deref() {
            None | Some("" | "true" | "1" | "yes" | "on") => Ok(toml::Value::Boolean(true)),
            Some("false" | "0" | "no" | "off") => Ok(toml::Value::Boolean(false)),
            Some(other) => Err(format!("expected true or false, got {other:?}")),
        },
        ValueKind::Int => match value {
            None | Some("") => Err("needs a value (a whole number)".to_string()),
            Some(v) => v
                .parse::<i64>()
                .map(toml::Value::Integer)
                .map_err(|_| format!("expected a whole number, got {v:?}")),
        },
        ValueKind::Str | ValueKind::List => match value {
            None | Some("") => Err("needs a value".to_string()),
            Some(v) => Ok(toml::Value::String(v.to_string())),
        },
    }
}

/// Read the `[section]` of a uWSGI ini file: `key = value` lines, `;` and `#` comments,
/// repeated keys kept in order. Values get uWSGI's magic variables expanded (see
/// [`expand`]); `path` is the file's path (absolute, for `%d`).
pub fn parse_ini(text: &str, section: &str, path: &Path) -> Result<Vec<Setting>, String> {
    let mut current: Option<&str> = None;
    let mut found = false;
    let mut settings: Vec<Setting> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').unwrap_or(rest).trim();
            found |= name == section;
            current = Some(name);
            continue;
        }
        if current != Some(section) {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(expand(v.trim(), path, &settings))),
            None => (line, None),
        };
        if key.is_empty() {
            return Err(format!("line {}: no option name before '='", i + 1));
        }
        settings.push(Setting {
            key: key.to_string(),
            value,
            line: Some(i + 1),
        });
    }
    if !found {
        return Err(format!("no [{section}] section"));
    }
    Ok(settings)
}

/// uWSGI's magic variables in ini values: `%d` the file's folder (with a trailing slash),
/// `%n` its name without extension, `%s` its name, `%e` its extension, `%p` its path, `%c`
/// the name of its folder, `%%` a percent sign, `%(key)` the last value of an earlier key,
/// `$(NAME)` an environment variable. Anything else is kept as written.
pub fn expand(value: &str, path: &Path, earlier: &[Setting]) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = path.parent().unwrap_or(Path::new("/"));
    let mut dir_slash = dir.display().to_string();
    if !dir_slash.ends_with('/') {
        dir_slash.push('/');
    }
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find(['%', '$']) {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let (replacement, used) = if let Some(inner) = tail
            .strip_prefix("%(")
            .or_else(|| tail.strip_prefix("$("))
            .and_then(|t| t.split_once(')').map(|(name, _)| name))
        {
            let found = if tail.starts_with('%') {
                earlier
                    .iter()
                    .rev()
                    .find(|s| s.key == inner)
                    .and_then(|s| s.value.clone())
            } else {
                std::env::var(inner).ok().or(Some(String::new()))
            };
            match found {
                Some(v) => (v, inner.len() + 3),
                None => (tail[..inner.len() + 3].to_string(), inner.len() + 3),
            }
        } else {
            let magic = match tail.as_bytes().get(1).filter(|_| tail.starts_with('%')) {
                Some(b'd') => Some(dir_slash.clone()),
                Some(b'n') => Some(stem.clone()),
                Some(b's') => Some(name.clone()),
                Some(b'e') => Some(ext.clone()),
                Some(b'p') => Some(path.display().to_string()),
                Some(b'c') => Some(dir_name.clone()),
                Some(b'%') => Some("%".to_string()),
                _ => None,
            };
            match magic {
                Some(v) => (v, 2),
                None => (tail[..1].to_string(), 1),
            }
        };
        out.push_str(&replacement);
        rest = &tail[used..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::raw::{HttpsValue, OneOrMany};

    fn flags(list: &[(&str, Option<&str>)]) -> Vec<Setting> {
        list.iter().map(|(k, v)| Setting::flag(k, *v)).collect()
    }

    #[test]
    fn flags_are_typed_by_key() {
        let raw = to_raw(&flags(&[
            ("master", None),
            ("https", Some("127.0.0.1:8443,a.crt,a.key")),
            ("https", Some("=0,b.crt,b.key")),
            ("workers", Some("3")),
            ("threads", Some(" 8 ")),
            ("uid", Some("33")),
            ("https-export-cert", Some("false")),
            ("reload-mercy", Some("5")),
        ]))
        .expect("valid");
        assert_eq!(raw.master, Some(true));
        assert_eq!(raw.processes, Some(3));
        assert_eq!(raw.threads, Some(8));
        assert_eq!(raw.https_export_cert, Some(false));
        assert_eq!(raw.reload_mercy, Some(5));
        let https = raw.https.expect("https").into_vec();
        assert_eq!(https.len(), 2);
        assert!(matches!(&https[1], HttpsValue::Compact(s) if s == "=0,b.crt,b.key"));
        assert_eq!(raw.uid.expect("uid").into_string(), "33");
    }

    #[test]
    fn a_repeated_single_key_keeps_the_last() {
        let raw = to_raw(&flags(&[
            ("processes", Some("2")),
            ("processes", Some("4")),
        ]))
        .expect("valid");
        assert_eq!(raw.processes, Some(4));
        let raw = to_raw(&flags(&[("http-to", Some("/a.sock"))])).expect("valid");
        assert!(matches!(raw.http_to, Some(OneOrMany::Many(v)) if v == ["/a.sock"]));
    }

    #[test]
    fn every_problem_is_listed() {
        let err = to_raw(&flags(&[
            ("wsgi-file", Some("app.py")),
            ("processes", Some("many")),
            ("harakiri-verbose", None),
            ("bogus", Some("1")),
            ("uid", None),
            ("master", Some("maybe")),
        ]))
        .expect_err("refused");
        assert_eq!(err.len(), 6, "{err:?}");
        assert!(err[0].starts_with("--wsgi-file: not supported: uWSGI's Python"));
        assert!(err[1].contains("--processes") && err[1].contains("many"));
        assert!(err[2].starts_with("--harakiri-verbose: not supported"));
        assert_eq!(err[3], "--bogus: unknown option");
        assert_eq!(err[4], "--uid: needs a value");
        assert!(err[5].contains("true or false"));
    }

    #[test]
    fn serde_errors_name_the_key() {
        let err = to_raw(&flags(&[("threads", Some("-1"))])).expect_err("negative");
        assert!(err[0].starts_with("threads:"), "{err:?}");
    }

    #[test]
    fn ini_sections_comments_and_repeats() {
        let text = "\
; a comment
# another
[other]
processes = 9

[uwsgi]
master = true
shared-socket = 0.0.0.0:443
https = =0,foobar.crt,foobar.key,HIGH
  https  =   =0,b.crt,b.key ; not a comment: uWSGI keeps it
enable-threads
[last]
uid = nobody
";
        let s = parse_ini(text, "uwsgi", Path::new("/etc/app.ini")).expect("valid");
        let keys: Vec<&str> = s.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "master",
                "shared-socket",
                "https",
                "https",
                "enable-threads"
            ]
        );
        assert_eq!(s[2].value.as_deref(), Some("=0,foobar.crt,foobar.key,HIGH"));
        assert_eq!(
            s[3].value.as_deref(),
            Some("=0,b.crt,b.key ; not a comment: uWSGI keeps it")
        );
        assert_eq!(s[4].value, None);
        assert_eq!(s[4].line, Some(11));
        let s = parse_ini(text, "other", Path::new("/etc/app.ini")).expect("valid");
        assert_eq!(s.len(), 1);
        let err = parse_ini(text, "missing", Path::new("/etc/app.ini")).expect_err("none");
        assert!(err.contains("[missing]"), "{err}");
    }

    #[test]
    fn ini_errors_name_lines() {
        let text = "[uwsgi]\nwsgi-file = app.py\nharakiri-verbose = true\nprocesses = 2\n";
        let s = parse_ini(text, "uwsgi", Path::new("/srv/app.ini")).expect("parses");
        let err = to_raw(&s).expect_err("refused");
        assert_eq!(err.len(), 2);
        assert!(err[0].starts_with("wsgi-file (line 2): not supported"));
        assert!(err[1].starts_with("harakiri-verbose (line 3): not supported"));
    }

    #[test]
    fn magic_variables() {
        let p = Path::new("/srv/site/app.ini");
        let earlier = vec![Setting {
            key: "base".into(),
            value: Some("/opt".into()),
            line: Some(1),
        }];
        assert_eq!(expand("%dfoo.crt", p, &[]), "/srv/site/foo.crt");
        assert_eq!(expand("/run/%n.sock", p, &[]), "/run/app.sock");
        assert_eq!(
            expand("%s %e %c %p", p, &[]),
            "app.ini ini site /srv/site/app.ini"
        );
        assert_eq!(expand("100%% %x %", p, &[]), "100% %x %");
        assert_eq!(expand("%(base)/x %(nope)", p, &earlier), "/opt/x %(nope)");
        std::env::set_var("UWSGI_MASTER_TEST_VAR", "v");
        assert_eq!(expand("$(UWSGI_MASTER_TEST_VAR)-$", p, &[]), "v-$");
    }
}
