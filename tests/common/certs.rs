//! Test PKI made at test time with the openssl crate.
//!
//! * `ca.crt`            "Test CA" (self-signed)
//! * `server.crt/.key`   signed by Test CA, SAN DNS:localhost, IP:127.0.0.1
//! * `client.crt/.key`   signed by Test CA, subject O=Test, CN=client
//! * `other-ca.crt`      an unrelated CA ("Other CA")
//! * `other-client.crt/.key` signed by Other CA, subject O=Other, CN=other-client

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Name, X509NameBuilder, X509};

/// Paths of the PEM files written for one test.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    pub ca_crt: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    pub client_crt: PathBuf,
    pub client_key: PathBuf,
    pub other_ca_crt: PathBuf,
    pub other_client_crt: PathBuf,
    pub other_client_key: PathBuf,
}

/// The subject of `client.crt` in X509_NAME_oneline form.
pub const CLIENT_DN: &str = "/O=Test/CN=client";

fn new_key() -> Result<PKey<Private>, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(EcKey::generate(&group)?)
}

fn name(entries: &[(&str, &str)]) -> Result<X509Name, ErrorStack> {
    let mut b = X509NameBuilder::new()?;
    for (k, v) in entries {
        b.append_entry_by_text(k, v)?;
    }
    Ok(b.build())
}

fn serial() -> Result<Asn1Integer, ErrorStack> {
    let mut bn = BigNum::new()?;
    bn.rand(63, MsbOption::MAYBE_ZERO, false)?;
    bn.to_asn1_integer()
}

struct Issued {
    cert: X509,
    key: PKey<Private>,
}

fn make_ca(cn: &str) -> Result<Issued, ErrorStack> {
    let key = new_key()?;
    let subject = name(&[("O", "Test"), ("CN", cn)])?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    b.set_subject_name(&subject)?;
    b.set_issuer_name(&subject)?;
    b.set_pubkey(&key)?;
    let nb = Asn1Time::from_unix(now_unix() - 3600)?;
    let na = Asn1Time::days_from_now(30)?;
    b.set_not_before(&nb)?;
    b.set_not_after(&na)?;
    b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
    b.append_extension(ski)?;
    b.sign(&key, MessageDigest::sha256())?;
    Ok(Issued {
        cert: b.build(),
        key,
    })
}

fn make_leaf(ca: &Issued, subject: &[(&str, &str)], server: bool) -> Result<Issued, ErrorStack> {
    let key = new_key()?;
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let sn = serial()?;
    b.set_serial_number(&sn)?;
    let subj = name(subject)?;
    b.set_subject_name(&subj)?;
    b.set_issuer_name(ca.cert.subject_name())?;
    b.set_pubkey(&key)?;
    // A little in the past so that clock skew never matters.
    let nb = Asn1Time::from_unix(now_unix() - 3600)?;
    let na = Asn1Time::days_from_now(30)?;
    b.set_not_before(&nb)?;
    b.set_not_after(&na)?;
    b.append_extension(BasicConstraints::new().build()?)?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_agreement()
            .build()?,
    )?;
    if server {
        b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(Some(&ca.cert), None))?;
        b.append_extension(san)?;
    } else {
        b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
    }
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(Some(&ca.cert), None))?;
    b.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(false)
        .build(&b.x509v3_context(Some(&ca.cert), None))?;
    b.append_extension(aki)?;
    b.sign(&ca.key, MessageDigest::sha256())?;
    Ok(Issued {
        cert: b.build(),
        key,
    })
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    fs::write(path, data)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

impl Certs {
    /// Make the whole test PKI and write it as PEM files into `dir`.
    pub fn generate(dir: &Path) -> Result<Certs, Box<dyn std::error::Error>> {
        let ca = make_ca("Test CA")?;
        let server = make_leaf(&ca, &[("O", "Test"), ("CN", "localhost")], true)?;
        let client = make_leaf(&ca, &[("O", "Test"), ("CN", "client")], false)?;
        let other_ca = make_ca("Other CA")?;
        let other_client = make_leaf(&other_ca, &[("O", "Other"), ("CN", "other-client")], false)?;

        let c = Certs {
            dir: dir.to_path_buf(),
            ca_crt: dir.join("ca.crt"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_crt: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_ca_crt: dir.join("other-ca.crt"),
            other_client_crt: dir.join("other-client.crt"),
            other_client_key: dir.join("other-client.key"),
        };
        write(&c.ca_crt, &ca.cert.to_pem()?, 0o644)?;
        write(&c.server_crt, &server.cert.to_pem()?, 0o644)?;
        write(
            &c.server_key,
            &server.key.private_key_to_pem_pkcs8()?,
            0o600,
        )?;
        write(&c.client_crt, &client.cert.to_pem()?, 0o644)?;
        write(
            &c.client_key,
            &client.key.private_key_to_pem_pkcs8()?,
            0o600,
        )?;
        write(&c.other_ca_crt, &other_ca.cert.to_pem()?, 0o644)?;
        write(&c.other_client_crt, &other_client.cert.to_pem()?, 0o644)?;
        write(
            &c.other_client_key,
            &other_client.key.private_key_to_pem_pkcs8()?,
            0o600,
        )?;
        Ok(c)
    }

    /// All private key files.
    pub fn keys(&self) -> Vec<&Path> {
        vec![&self.server_key, &self.client_key, &self.other_client_key]
    }

    /// All certificate files.
    pub fn crts(&self) -> Vec<&Path> {
        vec![
            &self.ca_crt,
            &self.server_crt,
            &self.client_crt,
            &self.other_ca_crt,
            &self.other_client_crt,
        ]
    }

    /// Make the files readable by a master that dropped to `gid` (e.g.
    /// nogroup): folder 0755, certificates 0644, keys 0640 owned root:gid.
    pub fn make_readable_by_group(&self, gid: u32) -> std::io::Result<()> {
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o755))?;
        for crt in self.crts() {
            fs::set_permissions(crt, fs::Permissions::from_mode(0o644))?;
        }
        for key in self.keys() {
            std::os::unix::fs::chown(key, Some(0), Some(gid))?;
            fs::set_permissions(key, fs::Permissions::from_mode(0o640))?;
        }
        Ok(())
    }

    /// `(cert, key)` of the client signed by the test CA.
    pub fn client(&self) -> (&Path, &Path) {
        (&self.client_crt, &self.client_key)
    }

    /// `(cert, key)` of the client signed by the unrelated CA.
    pub fn other_client(&self) -> (&Path, &Path) {
        (&self.other_client_crt, &self.other_client_key)
    }
}
