//! SNI: which context serves which server name, and uWSGI's `sni-dir`.
//!
//! The listener's default context carries a ClientHello callback that reads the server name
//! the client sent, looks it up here and switches the connection to the matching context; a
//! name that matches nothing (or no name) keeps the default certificate. `*.example.com`
//! matches exactly one label (`a.example.com`, not `example.com` nor `a.b.example.com`), as
//! certificates do; an exact name wins over a wildcard.
//!
//! The switch happens in the ClientHello callback, not the later servername callback,
//! because OpenSSL looks up the session to resume in between: switched first, the session-id
//! context of the name's own context decides, so a session made for one name is never
//! resumed under another (whose client-certificate rules may differ; nginx's CVE-2025-23419).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use foreign_types::ForeignTypeRef;
use openssl::ssl::{SslContext, SslRef, SslVerifyMode};
use openssl_sys as ffi;

use crate::settings::{CertKey, SniSettings, VerifyClient};
use crate::tls::TlsError;

/// A context and the verify mode to give the connection it takes over (SSL_set_SSL_CTX does
/// not carry the mode over).
#[derive(Clone)]
pub struct SniContext {
    pub ctx: SslContext,
    pub verify: SslVerifyMode,
}

/// Server name → context.
#[derive(Clone, Default)]
pub struct SniTable {
    exact: HashMap<String, SniContext>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, SniContext>,
}

impl SniTable {
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        let name = normalize(name);
        match name.strip_prefix("*.") {
            Some(rest) => self.wildcard.contains_key(rest),
            None => self.exact.contains_key(&name),
        }
    }

    /// Add a (checked, normalized) name; false when it is already there.
    pub fn insert(&mut self, name: &str, ctx: SniContext) -> bool {
        let name = normalize(name);
        let map = match name.strip_prefix("*.") {
            Some(rest) => (&mut self.wildcard, rest.to_string()),
            None => (&mut self.exact, name.clone()),
        };
        match map.0.entry(map.1) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(ctx);
                true
            }
        }
    }

    /// The context for the name a client sent.
    pub fn lookup(&self, server_name: &str) -> Option<&SniContext> {
        let name = normalize(server_name);
        if let Some(c) = self.exact.get(&name) {
            return Some(c);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }
}

/// The host name of a `server_name` extension's body (RFC 6066 §3): a list length, then
/// entries of a type byte (0: host name), a length and the name. None when it is malformed,
/// holds no host name, or the name is not ASCII.
pub fn parse_server_name(ext: &[u8]) -> Option<&str> {
    let u16_at = |b: &[u8], i: usize| -> Option<usize> {
        Some(usize::from(u16::from_be_bytes([
            *b.get(i)?,
            *b.get(i + 1)?,
        ])))
    };
    let list_len = u16_at(ext, 0)?;
    let list = ext.get(2..2 + list_len)?;
    let mut i = 0;
    while i < list.len() {
        let kind = *list.get(i)?;
        let len = u16_at(list, i + 1)?;
        let name = list.get(i + 3..i + 3 + len)?;
        if kind == 0 {
            return std::str::from_utf8(name)
                .ok()
                .filter(|n| !n.is_empty() && n.is_ascii());
        }
        i += 3 + len;
    }
    None
}

/// The server name in the ClientHello being processed. Only meaningful inside a ClientHello
/// callback.
pub fn client_hello_server_name(ssl: &SslRef) -> Option<String> {
    /// TLSEXT_TYPE_server_name.
    const SERVER_NAME: std::ffi::c_uint = 0;
    let mut data: *const std::ffi::c_uchar = std::ptr::null();
    let mut len: usize = 0;
    // SAFETY: `ssl` is the SSL whose ClientHello callback is running, so OpenSSL holds the
    // parsed ClientHello; on success it points `data` at `len` bytes of its own buffer, valid
    // until the callback returns. We copy the name out before that.
    let found =
        unsafe { ffi::SSL_client_hello_get0_ext(ssl.as_ptr(), SERVER_NAME, &mut data, &mut len) };
    if found != 1 || data.is_null() {
        return None;
    }
    // SAFETY: see above: `data` points to `len` readable bytes for the duration of this call.
    let ext = unsafe { std::slice::from_raw_parts(data, len) };
    parse_server_name(ext).map(str::to_string)
}

/// Lowercase, without a trailing dot.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A host name as configured: ASCII labels of letters, digits, `-` and `_`, optionally a
/// leading `*.` label. Returns the reason it is not.
pub fn check_name(name: &str) -> Result<(), String> {
    let n = normalize(name);
    let rest = n.strip_prefix("*.").unwrap_or(&n);
    if rest.is_empty() {
        return Err("empty name".into());
    }
    if n.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    for label in rest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!("label {label:?} is empty or longer than 63"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "label {label:?}: only letters, digits, '-' and '_' (write IDNs in punycode); \
                 '*' only as the whole first label"
            ));
        }
    }
    Ok(())
}

/// What `sni-dir` holds for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub cert: CertKey,
    /// `<name>.ca`: client certificates for this name are requested and verified against it.
    pub client_ca: Option<PathBuf>,
}

impl DirEntry {
    /// As an `sni` entry: the CA, when present, makes client certificates optional-verified
    /// (as uWSGI's sni-dir does); everything else comes from the listener.
    pub fn settings(&self) -> SniSettings {
        SniSettings {
            names: vec![self.name.clone()],
            certs: vec![self.cert.clone()],
            ciphers: None,
            client_ca: self.client_ca.clone(),
            verify_client: self.client_ca.as_ref().map(|_| VerifyClient::Optional),
        }
    }
}

/// Every `<name>.crt` in `dir` with its `<name>.key` (required), `<name>.ca` and
/// `<name>.ocsp` (optional), sorted by name. Other files are ignored.
pub fn scan_dir(dir: &Path) -> Result<Vec<DirEntry>, TlsError> {
    let err = |reason: String| TlsError::SniDir {
        dir: dir.to_path_buf(),
        reason,
    };
    let read = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
    let mut out = Vec::new();
    for entry in read {
        let entry = entry.map_err(|e| err(e.to_string()))?;
        let path = entry.path();
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        let Some(name) = file.strip_suffix(".crt") else {
            continue;
        };
        check_name(name).map_err(|r| err(format!("{file}: {r}")))?;
        let sibling = |ext: &str| dir.join(format!("{name}.{ext}"));
        let key = sibling("key");
        if !key.exists() {
            return Err(err(format!("{file} has no {name}.key beside it")));
        }
        let ca = sibling("ca");
        let ocsp = sibling("ocsp");
        out.push(DirEntry {
            name: normalize(name),
            cert: CertKey {
                cert: path.clone(),
                key,
                ocsp_response: ocsp.exists().then_some(ocsp),
            },
            client_ca: ca.exists().then_some(ca),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_name_extensions() {
        let ext = |entries: &[(u8, &[u8])]| {
            let mut list = Vec::new();
            for (kind, name) in entries {
                list.push(*kind);
                list.extend((name.len() as u16).to_be_bytes());
                list.extend(*name);
            }
            let mut out = (list.len() as u16).to_be_bytes().to_vec();
            out.extend(list);
            out
        };
        assert_eq!(
            parse_server_name(&ext(&[(0, b"api.example.com")])),
            Some("api.example.com")
        );
        assert_eq!(
            parse_server_name(&ext(&[(7, b"x"), (0, b"b.test")])),
            Some("b.test")
        );
        assert_eq!(parse_server_name(&ext(&[(7, b"x")])), None);
        assert_eq!(parse_server_name(&ext(&[(0, b"")])), None);
        assert_eq!(parse_server_name(&ext(&[(0, "é.test".as_bytes())])), None);
        let mut truncated = ext(&[(0, b"api.example.com")]);
        truncated.truncate(10);
        assert_eq!(parse_server_name(&truncated), None);
        assert_eq!(parse_server_name(&[]), None);
        assert_eq!(parse_server_name(&[0, 9, 0, 0]), None);
    }

    #[test]
    fn names_are_checked() {
        for ok in [
            "example.com",
            "API.Example.com.",
            "*.example.com",
            "x",
            "a-b_c.d1",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "*.",
            "*",
            "a..b",
            "a.*.b",
            "**.b",
            "foo*.b",
            "exa mple.com",
            "é.com",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lookup_prefers_exact_and_wildcards_match_one_label() {
        // Contexts are not needed to test the maps: use one context for all, told apart by
        // verify mode.
        let ctx = SslContext::builder(openssl::ssl::SslMethod::tls_server())
            .expect("ctx")
            .build();
        let entry = |bits| SniContext {
            ctx: ctx.clone(),
            verify: SslVerifyMode::from_bits_truncate(bits),
        };
        let mut t = SniTable::default();
        assert!(t.is_empty());
        assert!(t.insert("api.example.com", entry(1)));
        assert!(t.insert("*.Example.com", entry(2)));
        assert!(!t.insert("API.example.com.", entry(4)), "duplicate");
        assert!(t.contains("*.example.com"));
        let bits = |n: &str| t.lookup(n).map(|c| c.verify.bits());
        assert_eq!(bits("api.example.com"), Some(1));
        assert_eq!(bits("API.EXAMPLE.COM."), Some(1));
        assert_eq!(bits("www.example.com"), Some(2));
        assert_eq!(bits("example.com"), None);
        assert_eq!(bits("a.b.example.com"), None);
        assert_eq!(bits("other.org"), None);
        assert_eq!(bits(""), None);
    }

    #[test]
    fn sni_dir_pairs_files_by_name() {
        let dir = tempfile::tempdir().expect("tmp");
        let touch = |f: &str| std::fs::write(dir.path().join(f), b"x").expect("write");
        touch("b.example.com.crt");
        touch("b.example.com.key");
        touch("b.example.com.ca");
        touch("a.example.com.crt");
        touch("a.example.com.key");
        touch("a.example.com.ocsp");
        touch("README");
        touch("c.example.com.key");
        let found = scan_dir(dir.path()).expect("scan");
        let names: Vec<&str> = found.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["a.example.com", "b.example.com"]);
        assert!(found[0].client_ca.is_none() && found[0].cert.ocsp_response.is_some());
        assert!(found[1].client_ca.is_some() && found[1].cert.ocsp_response.is_none());
        assert_eq!(
            found[1].settings().verify_client,
            Some(VerifyClient::Optional)
        );
        touch("lonely.example.com.crt");
        let err = scan_dir(dir.path()).expect_err("no key").to_string();
        assert!(err.contains("lonely.example.com.crt"), "{err}");
        let err = scan_dir(&dir.path().join("missing"))
            .expect_err("no dir")
            .to_string();
        assert!(err.contains("missing"), "{err}");
    }
}
