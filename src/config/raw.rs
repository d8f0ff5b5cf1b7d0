//! The configuration as written: one flat serde struct (SPEC §9: `deny_unknown_fields`
//! cannot be combined with `flatten`), one per source, merged in order.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::https::HttpsTable;

/// A value that may be written as one item or a list. Deserialized by hand (config/de.rs),
/// not `untagged`, so that an error inside an item (an unknown key in an `[[https]]` table)
/// reaches the operator instead of "did not match any variant".
#[derive(Debug, Clone)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> OneOrMany<T> {
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `uid = "www-data"` or `uid = 33`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum NameOrId {
    Name(String),
    Id(u32),
}

impl NameOrId {
    pub fn into_string(self) -> String {
        match self {
            NameOrId::Name(s) => s,
            NameOrId::Id(n) => n.to_string(),
        }
    }
}

/// An `https` entry: the compact uWSGI string or a table (deserialized in config/de.rs).
// Parsed once per reload: the size of the table variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum HttpsValue {
    Compact(String),
    Table(HttpsTable),
}

/// What a key takes, for the sources written as text (command line, ini): they are typed
/// by the key before serde sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A switch: `--master`, `master = true`.
    Bool,
    Int,
    Str,
    /// Repeatable: each occurrence adds an item.
    List,
}

trait Kind {
    const KIND: ValueKind;
}

macro_rules! kinds {
    ($($ty:ty => $kind:ident),* $(,)?) => {
        $(impl Kind for $ty { const KIND: ValueKind = ValueKind::$kind; })*
    };
}

kinds! {
    bool => Bool,
    usize => Int,
    u64 => Int,
    u32 => Int,
    i32 => Int,
    String => Str,
    PathBuf => Str,
    NameOrId => Str,
}

impl<T> Kind for OneOrMany<T> {
    const KIND: ValueKind = ValueKind::List;
}

/// Other names a key answers to (serde aliases), and the key they stand for.
const ALIASES: &[(&str, &str)] = &[("workers", "processes")];

/// The key `name` stands for (kebab-case, aliases resolved) and its kind, or None when no
/// such key exists.
pub fn key_kind(name: &str) -> Option<(String, ValueKind)> {
    let name = ALIASES
        .iter()
        .find(|(alias, _)| *alias == name)
        .map_or(name, |(_, key)| key);
    RawConfig::FIELDS
        .iter()
        .map(|(field, kind)| (field.replace('_', "-"), *kind))
        .find(|(key, _)| key == name)
}

macro_rules! raw_config {
    ($($(#[$doc:meta])* $field:ident: $ty:ty,)*) => {
        #[derive(Debug, Clone, Default, Deserialize)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct RawConfig {
            $($(#[$doc])* pub $field: Option<$ty>,)*
        }

        impl RawConfig {
            /// Every key set in `later` replaces ours (lists included).
            pub fn merge(&mut self, later: RawConfig) {
                $(if later.$field.is_some() { self.$field = later.$field; })*
            }

            /// Every key and the kind of value it takes, as written (`snake_case` field
            /// names; the keys are their kebab-case forms).
            const FIELDS: &'static [(&'static str, ValueKind)] =
                &[$((stringify!($field), <$ty as Kind>::KIND),)*];
        }
    };
}

raw_config! {
    /// Accepted and ignored: there is always a master.
    master: bool,
    #[serde(alias = "workers")]
    processes: usize,
    threads: usize,
    shared_socket: OneOrMany<String>,
    uid: NameOrId,
    gid: NameOrId,
    https: OneOrMany<HttpsValue>,
    http_to: OneOrMany<String>,
    /// Plain-HTTP listeners that redirect every request to the https URL.
    http_to_https: OneOrMany<String>,
    listen: i32,
    pidfile: PathBuf,
    reload_mercy: u64,
    harakiri: u64,
    max_requests: u64,
    handshake_timeout: u64,
    http_headers_timeout: u64,
    http_keepalive: u64,
    http_timeout: u64,
    http_connect_timeout: u64,
    buffer_size: usize,
    max_body: u64,
    chunked_input_limit: u64,
    ssl_verify_depth: u32,
    https_session_context: String,
    https_export_cert: bool,
    ticket_key_file: PathBuf,
    /// `ssl-option` names, for every https entry (each may add its own).
    ssl_option: OneOrMany<String>,
    /// uWSGI's `sni-dir`, for every https entry that sets none.
    sni_dir: PathBuf,
    master_as_root: bool,
    proxy_protocol: bool,
    stats: String,
    access_log: bool,
    log_file: PathBuf,
    log_level: String,
}

impl RawConfig {
    /// Make every path absolute against `base` (the file's folder, or the working directory
    /// for command-line flags), and turn compact `https` strings into tables, so sources can
    /// be merged without losing where their paths came from.
    pub fn resolve_paths(&mut self, base: &Path) -> Result<(), String> {
        for p in [
            &mut self.pidfile,
            &mut self.ticket_key_file,
            &mut self.sni_dir,
            &mut self.log_file,
        ]
        .into_iter()
        .flatten()
        {
            *p = base.join(&*p);
        }
        if let Some(to) = self.http_to.take() {
            let resolved = to
                .into_vec()
                .into_iter()
                .map(|t| resolve_backend(&t, base))
                .collect();
            self.http_to = Some(OneOrMany::Many(resolved));
        }
        if let Some(https) = self.https.take() {
            let tables = https
                .into_vec()
                .into_iter()
                .map(|v| {
                    let mut t = match v {
                        HttpsValue::Compact(s) => HttpsTable::from_compact(&s)?,
                        HttpsValue::Table(t) => t,
                    };
                    t.resolve_paths(base);
                    Ok(HttpsValue::Table(t))
                })
                .collect::<Result<_, String>>()?;
            self.https = Some(OneOrMany::Many(tables));
        }
        Ok(())
    }
}

/// Unix socket paths in `http-to` are relative to `base` too.
fn resolve_backend(target: &str, base: &Path) -> String {
    for scheme in ["unix:", "http+unix:"] {
        if let Some(path) = target.strip_prefix(scheme) {
            return format!("{scheme}{}", base.join(path).display());
        }
    }
    if super::is_unix_path(target) {
        return base.join(target).display().to_string();
    }
    target.to_string()
}
