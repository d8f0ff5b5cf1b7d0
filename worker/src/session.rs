//! What we know of a connection once its handshake is done.

use std::fmt::Write;
use std::net::SocketAddr;

use openssl::ssl::{NameType, SslRef};
use openssl::x509::{X509NameRef, X509VerifyResult};

/// A verified client certificate, in the forms backends receive.
#[derive(Debug, Clone)]
pub struct ClientCert {
    pub pem: Vec<u8>,
    pub der: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub sni: Option<String>,
    pub tls_version: &'static str,
    pub cipher: &'static str,
    pub reused: bool,
    /// Subject of a verified client certificate, `/C=../O=../CN=..`.
    pub client_dn: Option<String>,
    pub client_cert: Option<ClientCert>,
}

impl ConnInfo {
    pub fn from_ssl(ssl: &SslRef, peer: SocketAddr, local: SocketAddr, export_cert: bool) -> Self {
        let verified = ssl.verify_result() == X509VerifyResult::OK;
        let cert = ssl.peer_certificate().filter(|_| verified);
        let client_dn = cert.as_ref().map(|c| oneline(c.subject_name()));
        let client_cert = cert.filter(|_| export_cert).and_then(|c| {
            Some(ClientCert {
                pem: c.to_pem().ok()?,
                der: c.to_der().ok()?,
            })
        });
        Self {
            peer,
            local,
            sni: ssl.servername(NameType::HOST_NAME).map(str::to_string),
            tls_version: ssl.version_str(),
            cipher: ssl.current_cipher().map_or("-", |c| c.name()),
            reused: ssl.session_reused(),
            client_dn,
            client_cert,
        }
    }
}

/// `X509_NAME_oneline` form, built from the name's entries in order: `/O=Test/CN=client`.
pub fn oneline(name: &X509NameRef) -> String {
    let mut out = String::new();
    for entry in name.entries() {
        let key = entry.object().nid().short_name().unwrap_or("?");
        let value = entry
            .data()
            .to_string()
            .unwrap_or_else(|_| String::from_utf8_lossy(entry.data().as_slice()).into_owned());
        let _ = write!(out, "/{key}={value}");
    }
    out
}
