//! TLS contexts, built once in the master and inherited by every worker through fork (so all
//! workers share the session-ticket keys).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslAcceptor, SslAcceptorBuilder, SslMethod, SslMode, SslOptions, SslSessionCacheMode,
    SslVerifyMode, SslVersion,
};
use openssl::x509::X509;

use crate::settings::{TlsSettings, TlsVersion, VerifyClient};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
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
}

/// Secure defaults close to Mozilla's "intermediate" profile (forward secrecy, AEAD only).
const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

/// Build the acceptor for one listener, reading and checking every file it names.
pub fn build_acceptor(tls: &TlsSettings, addr: SocketAddr) -> Result<SslAcceptor, TlsError> {
    let ctx_err = |error| TlsError::Context { addr, error };
    let mut b = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(ctx_err)?;
    b.set_options(
        SslOptions::NO_COMPRESSION
            | SslOptions::NO_RENEGOTIATION
            | SslOptions::CIPHER_SERVER_PREFERENCE,
    );
    b.set_min_proto_version(Some(version(tls.min_version)))
        .map_err(ctx_err)?;
    if tls.min_version < TlsVersion::Tls12 {
        // Old protocols need SHA-1 and friends, which OpenSSL 3 refuses at its default level.
        b.set_security_level(0);
    }
    let ciphers = tls.ciphers.as_deref().unwrap_or(DEFAULT_CIPHERS);
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
    load_identity(&mut b, &tls.cert, &tls.key)?;
    if let Some(ca) = &tls.client_ca {
        load_client_ca(&mut b, ca)?;
    }
    let mode = match (tls.verify_client, &tls.client_ca) {
        (VerifyClient::None, _) | (_, None) => SslVerifyMode::NONE,
        (VerifyClient::Optional, Some(_)) => SslVerifyMode::PEER,
        (VerifyClient::Required, Some(_)) => {
            SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT
        }
    };
    b.set_verify(mode);
    b.set_verify_depth(tls.verify_depth);
    // Without a session-id context OpenSSL aborts resumed handshakes when client
    // certificates are requested.
    let context = session_context(tls.session_context.as_deref(), addr);
    b.set_session_id_context(&context).map_err(ctx_err)?;
    b.set_session_cache_mode(SslSessionCacheMode::SERVER);
    // Idle (parked) connections give their record buffers back: thousands of kept-alive
    // connections then cost a few KiB each instead of ~34 KiB.
    b.set_mode(SslMode::RELEASE_BUFFERS);
    Ok(b.build())
}

fn version(v: TlsVersion) -> SslVersion {
    match v {
        TlsVersion::Tls10 => SslVersion::TLS1,
        TlsVersion::Tls11 => SslVersion::TLS1_1,
        TlsVersion::Tls12 => SslVersion::TLS1_2,
        TlsVersion::Tls13 => SslVersion::TLS1_3,
    }
}

/// At most 32 bytes (SSL_MAX_SID_CTX_LENGTH): a SHA-256 of the configured value or address.
fn session_context(configured: Option<&str>, addr: SocketAddr) -> [u8; 32] {
    let seed = match configured {
        Some(s) => s.to_string(),
        None => format!("uwsgi-master:{addr}"),
    };
    openssl::sha::sha256(seed.as_bytes())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        path: path.to_path_buf(),
        error,
    })
}

fn parse_certs(path: &Path) -> Result<Vec<X509>, TlsError> {
    let pem = read(path)?;
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
    let pem = read(path)?;
    PKey::private_key_from_pem(&pem).map_err(|error| TlsError::Parse {
        path: path.to_path_buf(),
        what: "not a PEM private key",
        error,
    })
}

/// Certificate (leaf first, then chain) and its key, checked to match.
fn load_identity(b: &mut SslAcceptorBuilder, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let parse_err = |what, error| TlsError::Parse {
        path: cert.to_path_buf(),
        what,
        error,
    };
    let mut certs = parse_certs(cert)?.into_iter();
    let leaf = certs.next().ok_or_else(|| TlsError::NoCertificate {
        path: cert.to_path_buf(),
    })?;
    b.set_certificate(&leaf)
        .map_err(|e| parse_err("certificate refused", e))?;
    for extra in certs {
        b.add_extra_chain_cert(extra)
            .map_err(|e| parse_err("chain certificate refused", e))?;
    }
    let pkey = parse_key(key)?;
    let mismatch = || TlsError::KeyMismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    b.set_private_key(&pkey).map_err(|_| mismatch())?;
    b.check_private_key().map_err(|_| mismatch())
}

fn load_client_ca(b: &mut SslAcceptorBuilder, ca: &Path) -> Result<(), TlsError> {
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
