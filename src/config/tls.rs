//! The TLS parts of an `https` entry beyond the compact uWSGI string: several certificates
//! (one per key type), OCSP responses, `sni` entries, `ssl-option` names.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Deserialize;

use worker::{CertKey, SniSettings, TlsOption, VerifyClient};

use super::raw::OneOrMany;

/// One value or a list of them, as written (`cert = "a.crt"` or `cert = ["a.crt", "b.crt"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "OneOrMany<T>")]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<T> From<OneOrMany<T>> for List<T> {
    fn from(v: OneOrMany<T>) -> Self {
        List(v.into_vec())
    }
}

impl<T> From<T> for List<T> {
    fn from(v: T) -> Self {
        List(vec![v])
    }
}

impl List<PathBuf> {
    pub fn resolve(&mut self, base: &Path) {
        for p in &mut self.0 {
            *p = base.join(&*p);
        }
    }
}

/// One `sni` entry of an https table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SniTable {
    /// Host names; `*.example.com` matches one label.
    pub name: List<String>,
    pub cert: List<PathBuf>,
    pub key: List<PathBuf>,
    #[serde(default)]
    pub ocsp_response: List<PathBuf>,
    pub ciphers: Option<String>,
    pub client_ca: Option<PathBuf>,
    pub verify_client: Option<String>,
}

impl SniTable {
    pub fn resolve_paths(&mut self, base: &Path) {
        self.cert.resolve(base);
        self.key.resolve(base);
        self.ocsp_response.resolve(base);
        if let Some(ca) = &mut self.client_ca {
            *ca = base.join(&*ca);
        }
    }
}

/// Pair `cert`, `key` and `ocsp-response` lists by position: one pair per key type.
pub fn cert_keys(
    cert: &List<PathBuf>,
    key: &List<PathBuf>,
    ocsp: &List<PathBuf>,
    what: &str,
) -> Result<Vec<CertKey>> {
    if cert.0.is_empty() {
        bail!("{what}: cert is empty");
    }
    if cert.0.len() != key.0.len() {
        bail!(
            "{what}: {} cert files but {} key files (one key per certificate, in the same order)",
            cert.0.len(),
            key.0.len()
        );
    }
    if ocsp.0.len() > cert.0.len() {
        bail!(
            "{what}: {} ocsp-response files for {} certificates",
            ocsp.0.len(),
            cert.0.len()
        );
    }
    Ok(cert
        .0
        .iter()
        .zip(&key.0)
        .enumerate()
        .map(|(i, (c, k))| CertKey {
            cert: c.clone(),
            key: k.clone(),
            ocsp_response: ocsp.0.get(i).cloned(),
        })
        .collect())
}

pub fn verify_client(value: Option<&str>, what: &str) -> Result<Option<VerifyClient>> {
    Ok(match value {
        None => None,
        Some("none") => Some(VerifyClient::None),
        Some("optional") => Some(VerifyClient::Optional),
        Some("required") => Some(VerifyClient::Required),
        Some(other) => {
            bail!("{what}: verify-client {other:?}: expected none, optional or required")
        }
    })
}

/// The `sni` entries of one https entry.
pub fn sni(entries: &[SniTable], what: &str) -> Result<Vec<SniSettings>> {
    entries
        .iter()
        .enumerate()
        .map(|(j, s)| {
            let what = format!("{what}, sni entry {}", j + 1);
            if s.name.0.is_empty() {
                bail!("{what}: name is empty");
            }
            Ok(SniSettings {
                names: s.name.0.clone(),
                certs: cert_keys(&s.cert, &s.key, &s.ocsp_response, &what)?,
                ciphers: s.ciphers.clone(),
                client_ca: s.client_ca.clone(),
                verify_client: verify_client(s.verify_client.as_deref(), &what)?,
            })
        })
        .collect()
}

/// `ssl-option` names: the global ones, then the entry's.
pub fn ssl_options(
    global: Option<&OneOrMany<String>>,
    entry: &List<String>,
) -> Result<Vec<TlsOption>> {
    let global = global.cloned().map(OneOrMany::into_vec).unwrap_or_default();
    let mut out = Vec::new();
    for name in global.iter().chain(&entry.0) {
        for opt in TlsOption::parse(name).map_err(anyhow::Error::msg)? {
            if !out.contains(&opt) {
                out.push(opt);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::{convert, Config, RawConfig};
    use super::*;

    /// Parse and convert a TOML text as if it were in /etc/app/app.toml.
    fn load(text: &str) -> Result<Config> {
        let mut raw: RawConfig =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        raw.resolve_paths(Path::new("/etc/app"))
            .map_err(anyhow::Error::msg)?;
        convert(raw)
    }

    #[test]
    fn tls_keys_of_the_table_form() {
        let c = load(
            r#"
ssl-option = "no-tickets"
sni-dir = "certs.d"
ticket-key-file = "ticket.key"
proxy-protocol = true

[[https]]
socket = "127.0.0.1:8443"
cert = ["ec.crt", "rsa.crt"]
key = ["ec.key", "rsa.key"]
ocsp-response = "ec.ocsp"
ssl-option = ["prioritize-chacha", "NO_TICKETS"]
proxy-protocol = false
sni = [
  { name = "api.example.com", cert = "api.crt", key = "api.key" },
  { name = ["*.apps.example.com", "apps.example.com"], cert = ["a.crt", "b.crt"],
    key = ["a.key", "b.key"], ocsp-response = ["a.ocsp"], ciphers = "HIGH",
    client-ca = "ca.crt", verify-client = "required" },
]

[[https]]
socket = "127.0.0.1:9443"
cert = "x.crt"
key = "x.key"
sni-dir = "/srv/sni"
"#,
        )
        .expect("valid");
        let l = &c.worker.listeners[0];
        assert!(!l.proxy_protocol, "the entry wins over the global key");
        let t = &l.tls;
        assert_eq!(t.cert, PathBuf::from("/etc/app/ec.crt"));
        assert_eq!(t.ocsp_response, Some(PathBuf::from("/etc/app/ec.ocsp")));
        assert_eq!(t.extra_certs.len(), 1);
        assert_eq!(t.extra_certs[0].key, PathBuf::from("/etc/app/rsa.key"));
        assert_eq!(t.extra_certs[0].ocsp_response, None);
        assert_eq!(
            t.options,
            [TlsOption::NoTickets, TlsOption::PrioritizeChacha]
        );
        assert_eq!(t.sni_dir, Some(PathBuf::from("/etc/app/certs.d")));
        assert_eq!(
            t.ticket_key_file,
            Some(PathBuf::from("/etc/app/ticket.key"))
        );
        assert_eq!(t.sni.len(), 2);
        assert_eq!(t.sni[0].names, ["api.example.com"]);
        assert_eq!(t.sni[0].verify_client, None);
        let s = &t.sni[1];
        assert_eq!(s.names, ["*.apps.example.com", "apps.example.com"]);
        assert_eq!(s.certs.len(), 2);
        assert_eq!(
            s.certs[0].ocsp_response,
            Some(PathBuf::from("/etc/app/a.ocsp"))
        );
        assert_eq!(s.client_ca, Some(PathBuf::from("/etc/app/ca.crt")));
        assert_eq!(s.verify_client, Some(VerifyClient::Required));
        let l2 = &c.worker.listeners[1];
        assert!(l2.proxy_protocol, "the global key");
        assert_eq!(l2.tls.sni_dir, Some(PathBuf::from("/srv/sni")));
        assert_eq!(l2.tls.options, [TlsOption::NoTickets]);
    }

    #[test]
    fn compact_entries_keep_working() {
        let c = load("https = [\"127.0.0.1:8443,a.crt,a.key,HIGH,!ca.crt\"]\n").expect("valid");
        let t = &c.worker.listeners[0].tls;
        assert_eq!(t.cert, PathBuf::from("/etc/app/a.crt"));
        assert!(t.extra_certs.is_empty() && t.sni.is_empty() && t.options.is_empty());
        assert!(!c.worker.listeners[0].proxy_protocol);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let err = |text: &str| format!("{:#}", load(text).expect_err("invalid"));
        let base = "[[https]]\nsocket = \"127.0.0.1:8443\"\n";
        let msg = err(&format!(
            "{base}cert = [\"a.crt\", \"b.crt\"]\nkey = \"a.key\"\n"
        ));
        assert!(msg.contains("2 cert files but 1 key"), "{msg}");
        let msg = err(&format!(
            "{base}cert = \"a.crt\"\nkey = \"a.key\"\nssl-option = \"no-sslv2\"\n"
        ));
        assert!(
            msg.contains("no-sslv2") && msg.contains("https entry 1"),
            "{msg}"
        );
        let msg = err(&format!(
            "{base}cert = \"a.crt\"\nkey = \"a.key\"\nsni = [{{ name = \"x\", cert = \"x.crt\", key = \"x.key\", colour = 1 }}]\n"
        ));
        assert!(msg.contains("colour"), "{msg}");
        let msg = err(&format!(
            "{base}cert = \"a.crt\"\nkey = \"a.key\"\nsni = [{{ name = \"x\", cert = \"x.crt\", key = \"x.key\", verify-client = \"maybe\" }}]\n"
        ));
        assert!(
            msg.contains("sni entry 1") && msg.contains("maybe"),
            "{msg}"
        );
        let msg = err(&format!(
            "{base}cert = \"a.crt\"\nkey = \"a.key\"\nsni = [{{ name = [], cert = \"x.crt\", key = \"x.key\" }}]\n"
        ));
        assert!(msg.contains("name is empty"), "{msg}");
    }
}
