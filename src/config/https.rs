//! `https` entries: uWSGI's compact `socket,cert,key[,ciphers[,[!]ca]]` and the table form.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::tls::{List, SniTable};

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpsTable {
    /// An address, or `=N`: the N-th shared socket.
    pub socket: String,
    /// One certificate per key type (`["ec.crt", "rsa.crt"]`), `key` in the same order.
    pub cert: List<PathBuf>,
    pub key: List<PathBuf>,
    pub ciphers: Option<String>,
    pub ciphersuites: Option<String>,
    pub client_ca: Option<PathBuf>,
    /// "none" | "optional" | "required"; default: optional when client-ca is set.
    pub verify_client: Option<String>,
    pub min_version: Option<String>,
    pub export_cert: Option<bool>,
    /// DER OCSP responses to staple, in the order of `cert`.
    #[serde(default)]
    pub ocsp_response: List<PathBuf>,
    pub sni: Option<Vec<SniTable>>,
    pub sni_dir: Option<PathBuf>,
    #[serde(default)]
    pub ssl_option: List<String>,
    pub proxy_protocol: Option<bool>,
}

impl HttpsTable {
    /// Parse `socket,cert,key[,ciphers[,[!]ca]]`. `!` before the CA makes client
    /// certificates mandatory; without it they are requested and verified when presented.
    pub fn from_compact(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        if parts.len() < 3 || parts.len() > 5 {
            return Err(format!(
                "https entry {s:?}: expected socket,cert,key[,ciphers[,[!]ca]]"
            ));
        }
        if parts[..3].iter().any(|p| p.is_empty()) {
            return Err(format!(
                "https entry {s:?}: socket, cert and key must not be empty"
            ));
        }
        let ciphers = parts
            .get(3)
            .filter(|c| !c.is_empty())
            .map(|c| c.to_string());
        let (client_ca, verify_client) = match parts.get(4).filter(|c| !c.is_empty()) {
            Some(ca) => match ca.strip_prefix('!') {
                Some(ca) => (Some(PathBuf::from(ca)), Some("required".to_string())),
                None => (Some(PathBuf::from(ca)), Some("optional".to_string())),
            },
            None => (None, None),
        };
        Ok(HttpsTable {
            socket: parts[0].to_string(),
            cert: PathBuf::from(parts[1]).into(),
            key: PathBuf::from(parts[2]).into(),
            ciphers,
            client_ca,
            verify_client,
            ..Default::default()
        })
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        self.cert.resolve(base);
        self.key.resolve(base);
        self.ocsp_response.resolve(base);
        if let Some(ca) = &mut self.client_ca {
            *ca = base.join(&*ca);
        }
        for sni in self.sni.iter_mut().flatten() {
            sni.resolve_paths(base);
        }
        if let Some(dir) = &mut self.sni_dir {
            *dir = base.join(&*dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_forms() {
        let t = HttpsTable::from_compact("=0,foobar.crt,foobar.key").expect("valid");
        assert_eq!(t.socket, "=0");
        assert_eq!(t.cert.0, [PathBuf::from("foobar.crt")]);
        assert_eq!(t.ciphers, None);
        let t = HttpsTable::from_compact("=1,a.crt,a.key,HIGH,!ca.crt").expect("valid");
        assert_eq!(t.ciphers.as_deref(), Some("HIGH"));
        assert_eq!(t.client_ca, Some(PathBuf::from("ca.crt")));
        assert_eq!(t.verify_client.as_deref(), Some("required"));
        let t = HttpsTable::from_compact("0.0.0.0:8443,a.crt,a.key,HIGH,ca.crt").expect("valid");
        assert_eq!(t.verify_client.as_deref(), Some("optional"));
        assert!(HttpsTable::from_compact("=0,a.crt").is_err());
        assert!(HttpsTable::from_compact("=0,,a.key").is_err());
    }
}
