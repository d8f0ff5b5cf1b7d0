//! TLS contexts, built once in the master and inherited by every worker through fork (so all
//! workers share the session-ticket keys).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ocsp::{OcspCertId, OcspCertStatus, OcspResponse, OcspResponseStatus};
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    ClientHelloResponse, SslAcceptor, SslAcceptorBuilder, SslContextBuilder, SslMethod, SslOptions,
    SslRef, SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use openssl::x509::{X509Ref, X509};
use openssl_sys as ffi;

use crate::files::{self, FileKind, ReadError};
use crate::settings::{CertKey, SniSettings, TlsSettings, TlsVersion, VerifyClient};
use crate::sni::{self, SniContext, SniTable};
use crate::tickets::{self, TicketKeys};
use crate::tls_option::TlsOption;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("{}: {what}: {error}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        error: openssl::error::ErrorStack,
    },
    #[error("{}: no certificate found in the file", path.display())]
    NoCertificate { path: PathBuf },
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error(
        "certificates {} and {} have keys of the same type: give one certificate per key \
         type (e.g. one ECDSA and one RSA)",
        first.display(),
        second.display()
    )]
    SameKeyType { first: PathBuf, second: PathBuf },
    #[error("cipher list {value:?} rejected by OpenSSL: {error}")]
    Ciphers {
        value: String,
        error: openssl::error::ErrorStack,
    },
    #[error("TLS 1.3 ciphersuites {value:?} rejected by OpenSSL: {error}")]
    Ciphersuites {
        value: String,
        error: openssl::error::ErrorStack,
    },
    #[error("TLS context for {addr}: {error}")]
    Context {
        addr: SocketAddr,
        error: openssl::error::ErrorStack,
    },
    #[error("ticket-key-file {}: {reason}", path.display())]
    TicketKeys { path: PathBuf, reason: String },
    #[error("sni-dir {}: {reason}", dir.display())]
    SniDir { dir: PathBuf, reason: String },
    #[error("sni name {name:?}: {reason}")]
    SniName { name: String, reason: String },
    #[error("ocsp-response {}: {reason}", path.display())]
    Ocsp { path: PathBuf, reason: String },
}

/// Secure defaults close to Mozilla's "intermediate" profile (forward secrecy, AEAD only).
const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

/// Added to the default when `min-version` is below 1.2: TLS 1.0 and 1.1 have no AEAD
/// cipher, so they need these CBC ones (Mozilla's "old" profile, forward secret first).
const LEGACY_CIPHERS: &str = "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:\
ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA";

/// Build the acceptor for one listener, reading and checking every file it names: its
/// certificates, the SNI contexts its default context switches to, ticket keys and OCSP
/// responses.
pub fn build_acceptor(tls: &TlsSettings, addr: SocketAddr) -> Result<SslAcceptor, TlsError> {
    let keys = match &tls.ticket_key_file {
        Some(path) => Some(Arc::new(TicketKeys::load(path)?)),
        None => None,
    };
    let table = sni_table(tls, addr, keys.as_ref())?;
    let default = Profile::listener(tls);
    let sid = session_context(tls.session_context.as_deref(), addr, None);
    let mut b = context(tls, &default, addr, &sid, keys.as_ref())?;
    if !table.is_empty() {
        b.set_client_hello_callback(move |ssl, _alert| {
            select_context(ssl, &table)?;
            Ok(ClientHelloResponse::SUCCESS)
        });
    }
    Ok(b.build())
}

/// What differs between the contexts of one listener: the listener's own, and each SNI one.
struct Profile<'a> {
    certs: Vec<CertKey>,
    ciphers: Option<&'a str>,
    client_ca: Option<&'a Path>,
    verify_client: VerifyClient,
}

impl<'a> Profile<'a> {
    fn listener(tls: &'a TlsSettings) -> Profile<'a> {
        let mut certs = vec![CertKey {
            cert: tls.cert.clone(),
            key: tls.key.clone(),
            ocsp_response: tls.ocsp_response.clone(),
        }];
        certs.extend(tls.extra_certs.iter().cloned());
        Profile {
            certs,
            ciphers: tls.ciphers.as_deref(),
            client_ca: tls.client_ca.as_deref(),
            verify_client: tls.verify_client,
        }
    }

    /// An SNI entry: what it does not set is the listener's. A CA of its own with no mode
    /// requests client certificates, as `client-ca` does on a listener.
    fn sni(tls: &'a TlsSettings, s: &'a SniSettings) -> Profile<'a> {
        let verify_client = match (s.verify_client, &s.client_ca) {
            (Some(v), _) => v,
            (None, Some(_)) if tls.verify_client == VerifyClient::None => VerifyClient::Optional,
            (None, _) => tls.verify_client,
        };
        Profile {
            certs: s.certs.clone(),
            ciphers: s.ciphers.as_deref().or(tls.ciphers.as_deref()),
            client_ca: s.client_ca.as_deref().or(tls.client_ca.as_deref()),
            verify_client,
        }
    }

    fn verify_mode(&self) -> SslVerifyMode {
        match (self.verify_client, self.client_ca) {
            (VerifyClient::None, _) | (_, None) => SslVerifyMode::NONE,
            (VerifyClient::Optional, Some(_)) => SslVerifyMode::PEER,
            (VerifyClient::Required, Some(_)) => {
                SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT
            }
        }
    }
}

/// One context: the listener's settings with the profile's certificates, ciphers and CA.
fn context(
    tls: &TlsSettings,
    p: &Profile,
    addr: SocketAddr,
    sid: &[u8],
    keys: Option<&Arc<TicketKeys>>,
) -> Result<SslAcceptorBuilder, TlsError> {
    let ctx_err = |error| TlsError::Context { addr, error };
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(ctx_err)?;
    let mut set = SslOptions::NO_COMPRESSION
        | SslOptions::NO_RENEGOTIATION
        | SslOptions::CIPHER_SERVER_PREFERENCE;
    let mut clear = SslOptions::empty();
    let mut cache = SslSessionCacheMode::SERVER;
    for opt in &tls.options {
        match opt {
            TlsOption::NoTickets => set |= SslOptions::NO_TICKET,
            TlsOption::NoSessionCache => cache = SslSessionCacheMode::OFF,
            TlsOption::PrioritizeChacha => set |= SslOptions::PRIORITIZE_CHACHA,
            TlsOption::NoTls13 => set |= SslOptions::NO_TLSV1_3,
            TlsOption::NoTls12 => set |= SslOptions::NO_TLSV1_2,
            TlsOption::CipherServerPreference
            | TlsOption::NoCompression
            | TlsOption::NoRenegotiation => {}
            TlsOption::NoCipherServerPreference => {
                set.remove(SslOptions::CIPHER_SERVER_PREFERENCE);
                clear |= SslOptions::CIPHER_SERVER_PREFERENCE;
            }
            TlsOption::IgnoreUnexpectedEof => set |= SslOptions::IGNORE_UNEXPECTED_EOF,
        }
    }
    b.clear_options(clear);
    b.set_options(set);
    // One read(2) per record instead of two (its 5-byte header, then its body); conn.rs
    // asks SSL_has_pending, which sees bytes read ahead, before it parks a connection.
    b.set_read_ahead(true);
    b.set_min_proto_version(Some(version(tls.min_version)))
        .map_err(ctx_err)?;
    let legacy = tls.min_version < TlsVersion::Tls12;
    if legacy {
        // The Mozilla profile switches these off by option, beside the minimum version.
        b.clear_options(SslOptions::NO_TLSV1 | SslOptions::NO_TLSV1_1);
        // Old protocols need SHA-1 and friends, which OpenSSL 3 refuses at its default level.
        b.set_security_level(0);
    }
    let default_ciphers;
    let ciphers = match p.ciphers {
        Some(c) => c,
        None if legacy => {
            default_ciphers = format!("{DEFAULT_CIPHERS}:{LEGACY_CIPHERS}");
            &default_ciphers
        }
        None => DEFAULT_CIPHERS,
    };
    b.set_cipher_list(ciphers)
        .map_err(|error| TlsError::Ciphers {
            value: ciphers.to_string(),
            error,
        })?;
    if let Some(suites) = &tls.ciphersuites {
        b.set_ciphersuites(suites)
            .map_err(|error| TlsError::Ciphersuites {
                value: suites.clone(),
                error,
            })?;
    }
    let staples = load_identities(&mut b, &p.certs)?;
    if !staples.is_empty() {
        b.set_status_callback(move |ssl| staple(ssl, &staples))
            .map_err(ctx_err)?;
    }
    if let Some(ca) = p.client_ca {
        load_client_ca(&mut b, ca)?;
    }
    b.set_verify(p.verify_mode());
    b.set_verify_depth(tls.verify_depth);
    // Without a session-id context OpenSSL aborts resumed handshakes when client
    // certificates are requested. Each context has its own: a session is resumed only in
    // the context (name, certificate, client-certificate rules) that made it.
    b.set_session_id_context(sid).map_err(ctx_err)?;
    b.set_session_cache_mode(cache);
    // One TLS 1.3 session ticket per full handshake instead of OpenSSL's two: a client
    // resumes with one, and each costs an encryption and a record.
    b.set_num_tickets(1).map_err(ctx_err)?;
    // No SSL_MODE_RELEASE_BUFFERS: it frees and reallocates both record buffers around
    // every request (~9 % of keep-alive throughput). Parked connections give their
    // buffers back instead (park.rs), so idle ones still cost a few KiB each.
    if let Some(keys) = keys {
        tickets::install(&mut b, Arc::clone(keys)).map_err(ctx_err)?;
    }
    Ok(b)
}

/// The SNI contexts of a listener: its `sni` entries, then what `sni-dir` holds (an `sni`
/// entry wins over a file for the same name).
fn sni_table(
    tls: &TlsSettings,
    addr: SocketAddr,
    keys: Option<&Arc<TicketKeys>>,
) -> Result<SniTable, TlsError> {
    let mut table = SniTable::default();
    let add = |table: &mut SniTable, s: &SniSettings| -> Result<(), TlsError> {
        let profile = Profile::sni(tls, s);
        let sid = session_context(tls.session_context.as_deref(), addr, Some(&s.names));
        let entry = SniContext {
            ctx: context(tls, &profile, addr, &sid, keys)?
                .build()
                .into_context(),
            verify: profile.verify_mode(),
        };
        for name in &s.names {
            let bad = |reason: String| TlsError::SniName {
                name: name.clone(),
                reason,
            };
            sni::check_name(name).map_err(bad)?;
            if !table.insert(name, entry.clone()) {
                return Err(bad("listed twice".into()));
            }
        }
        Ok(())
    };
    for s in &tls.sni {
        add(&mut table, s)?;
    }
    if let Some(dir) = &tls.sni_dir {
        for found in sni::scan_dir(dir)? {
            if table.contains(&found.name) {
                log::warn!(
                    "sni-dir {}: {} is also an sni entry, which wins",
                    dir.display(),
                    found.name
                );
                continue;
            }
            add(&mut table, &found.settings())?;
        }
    }
    Ok(table)
}

/// The ClientHello callback: switch to the context of the name the client asked for, before
/// OpenSSL looks for a session to resume. An unknown name (or none) keeps the listener's
/// default certificate. Everything that is not per-name (options, versions, verify depth) is
/// the same in every context of a listener; the verify mode is not carried over by
/// SSL_set_SSL_CTX, so it is set here (as nginx does).
fn select_context(ssl: &mut SslRef, table: &SniTable) -> Result<(), ErrorStack> {
    let Some(name) = sni::client_hello_server_name(ssl) else {
        return Ok(());
    };
    let Some(entry) = table.lookup(&name) else {
        return Ok(());
    };
    ssl.set_ssl_context(&entry.ctx)?;
    ssl.set_verify(entry.verify);
    Ok(())
}

fn version(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::Tls10 => SslVersion::TLS1,
        TlsVersion::Tls11 => SslVersion::TLS1_1,
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    }
}

/// At most 32 bytes (SSL_MAX_SID_CTX_LENGTH): a SHA-256 of the configured value or address,
/// and of the names of an SNI context.
fn session_context(
    configured: Option<&str>,
    addr: SocketAddr,
    names: Option<&[String]>,
) -> [u8; 32] {
    let mut seed = match configured {
        Some(s) => s.to_string(),
        None => format!("uwsgi-master:{addr}"),
    };
    if let Some(names) = names {
        seed.push_str("\0sni");
        for n in names {
            seed.push('\0');
            seed.push_str(&sni::normalize(n));
        }
    }
    openssl::sha::sha256(seed.as_bytes())
}

fn parse_certs(path: &Path) -> Result<Vec<X509>, TlsError> {
    let pem = files::read(path, FileKind::Public)?;
    let certs = X509::stack_from_pem(&pem).map_err(|error| TlsError::Parse {
        path: path.to_path_buf(),
        what: "not a PEM certificate",
        error,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn parse_key(path: &Path) -> Result<PKey<Private>, TlsError> {
    let pem = files::read(path, FileKind::Secret)?;
    PKey::private_key_from_pem(&pem).map_err(|error| TlsError::Parse {
        path: path.to_path_buf(),
        what: "not a PEM private key",
        error,
    })
}

/// Each certificate (leaf first, then its chain) and its key, checked to match; at most one
/// per key type (OpenSSL keeps one per type and picks by what the client supports). Returns
/// the OCSP responses to staple, by leaf.
fn load_identities(
    b: &mut SslContextBuilder,
    certs: &[CertKey],
) -> Result<Vec<(X509, Vec<u8>)>, TlsError> {
    let mut types: Vec<(openssl::pkey::Id, &Path)> = Vec::new();
    let mut staples = Vec::new();
    for ck in certs {
        let (cert, key) = (&ck.cert, &ck.key);
        let parse_err = |what, error| TlsError::Parse {
            path: cert.to_path_buf(),
            what,
            error,
        };
        let mut chain = parse_certs(cert)?.into_iter();
        let leaf = chain.next().ok_or_else(|| TlsError::NoCertificate {
            path: cert.to_path_buf(),
        })?;
        let pkey = parse_key(key)?;
        if let Some((_, first)) = types.iter().find(|(id, _)| *id == pkey.id()) {
            return Err(TlsError::SameKeyType {
                first: first.to_path_buf(),
                second: cert.to_path_buf(),
            });
        }
        types.push((pkey.id(), cert));
        b.set_certificate(&leaf)
            .map_err(|e| parse_err("certificate refused", e))?;
        let issuer = chain.next();
        for extra in issuer.iter().chain(chain.as_slice()) {
            add_chain_cert(b, extra).map_err(|e| parse_err("chain certificate refused", e))?;
        }
        let mismatch = || TlsError::KeyMismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        };
        b.set_private_key(&pkey).map_err(|_| mismatch())?;
        b.check_private_key().map_err(|_| mismatch())?;
        if let Some(path) = &ck.ocsp_response {
            if let Some(der) = load_ocsp(path, &leaf, issuer.as_deref())? {
                staples.push((leaf, der));
            }
        }
    }
    Ok(staples)
}

/// Add `cert` to the chain of the certificate set last (each key type has its own chain).
fn add_chain_cert(b: &mut SslContextBuilder, cert: &X509Ref) -> Result<(), ErrorStack> {
    // SAFETY: `b.as_ptr()` is the live SSL_CTX the builder owns. SSL_CTRL_CHAIN_CERT with
    // larg 1 is the SSL_CTX_add1_chain_cert macro: it takes its own reference to the X509,
    // which stays owned by `cert`, and reads nothing else.
    let rc = unsafe {
        ffi::SSL_CTX_ctrl(
            b.as_ptr(),
            ffi::SSL_CTRL_CHAIN_CERT,
            1,
            cert.as_ptr().cast(),
        )
    };
    if rc == 1 {
        Ok(())
    } else {
        Err(ErrorStack::get())
    }
}

/// Read a DER OCSP response. One that does not parse or is not "successful" is an error;
/// one that does not cover the certificate, says it is not good, or is out of date is
/// logged and not stapled (a stale staple makes strict clients fail).
fn load_ocsp(
    path: &Path,
    leaf: &X509Ref,
    issuer: Option<&X509Ref>,
) -> Result<Option<Vec<u8>>, TlsError> {
    let der = files::read(path, FileKind::Public)?;
    let bad = |reason: String| TlsError::Ocsp {
        path: path.to_path_buf(),
        reason,
    };
    let resp =
        OcspResponse::from_der(&der).map_err(|e| bad(format!("not a DER OCSP response: {e}")))?;
    if resp.status() != OcspResponseStatus::SUCCESSFUL {
        return Err(bad(format!(
            "response status is not successful ({:?})",
            resp.status()
        )));
    }
    let basic = resp
        .basic()
        .map_err(|e| bad(format!("no basic response: {e}")))?;
    let Some(issuer) = issuer else {
        // Without the issuer in the chain the response cannot be matched to the certificate.
        return Ok(Some(der));
    };
    let skip = |why: &str| {
        log::warn!("ocsp-response {}: {why}; not stapled", path.display());
        Ok(None)
    };
    let id = OcspCertId::from_cert(openssl::hash::MessageDigest::sha1(), leaf, issuer)
        .map_err(|e| bad(e.to_string()))?;
    let Some(status) = basic.find_status(&id) else {
        return skip("it does not cover the certificate");
    };
    if status.status != OcspCertStatus::GOOD {
        return skip("it does not say the certificate is good");
    }
    if status.check_validity(300, None).is_err() {
        return skip("it is out of date or not valid yet");
    }
    Ok(Some(der))
}

/// The status callback: staple the response of the certificate this handshake uses.
fn staple(ssl: &mut SslRef, staples: &[(X509, Vec<u8>)]) -> Result<bool, ErrorStack> {
    let chosen = ssl
        .certificate()
        .and_then(|c| staples.iter().find(|(leaf, _)| *c == *leaf));
    let der = match chosen {
        Some((_, der)) => der,
        None if staples.len() == 1 => &staples[0].1,
        None => return Ok(false),
    };
    ssl.set_ocsp_status(der)?;
    Ok(true)
}

fn load_client_ca(b: &mut SslContextBuilder, ca: &Path) -> Result<(), TlsError> {
    for cert in parse_certs(ca)? {
        let refused = |error| TlsError::Parse {
            path: ca.to_path_buf(),
            what: "CA certificate refused",
            error,
        };
        b.add_client_ca(&cert).map_err(refused)?;
        b.cert_store_mut().add_cert(cert).map_err(refused)?;
    }
    Ok(())
}

/// "subject /CN=..., expires <date>" of the first certificate in a PEM file.
pub fn certificate_summary(path: &Path) -> Result<String, TlsError> {
    let certs = parse_certs(path)?;
    let leaf = &certs[0];
    Ok(format!(
        "subject {}, expires {}",
        crate::session::oneline(leaf.subject_name()),
        leaf.not_after()
    ))
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
