//! Certificates made at test time with the openssl crate: a CA, a server certificate for
//! `localhost` and 127.0.0.1, a client certificate of that CA, and a client certificate of
//! another CA.

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
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509NameBuilder, X509};

/// The client certificate's subject as the router passes it (`HTTPS_DN`).
pub const CLIENT_DN: &str = "/O=Test/CN=client";

pub struct Certs {
    pub ca_crt: PathBuf,
    pub server_crt: PathBuf,
    pub server_key: PathBuf,
    pub client_crt: PathBuf,
    pub client_key: PathBuf,
    pub other_client_crt: PathBuf,
    pub other_client_key: PathBuf,
}

struct Issued {
    cert: X509,
    key: PKey<Private>,
}

fn issue(
    subject: &[(&str, &str)],
    issuer: Option<&Issued>,
    kind: Kind,
) -> Result<Issued, ErrorStack> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    let key = PKey::from_ec_key(EcKey::generate(&group)?)?;
    let mut name = X509NameBuilder::new()?;
    for (k, v) in subject {
        name.append_entry_by_text(k, v)?;
    }
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(63, MsbOption::MAYBE_ZERO, false)?;
    let serial: Asn1Integer = serial.to_asn1_integer()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map_or(&*name, |i| i.cert.subject_name()))?;
    b.set_pubkey(&key)?;
    b.set_not_before(&*Asn1Time::days_from_now(0)?)?;
    b.set_not_after(&*Asn1Time::days_from_now(7)?)?;
    match kind {
        Kind::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(KeyUsage::new().key_cert_sign().crl_sign().build()?)?;
        }
        Kind::Server => {
            b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
            let san = SubjectAlternativeName::new()
                .dns("localhost")
                .ip("127.0.0.1")
                .build(&b.x509v3_context(issuer.map(|i| &*i.cert), None))?;
            b.append_extension(san)?;
        }
        Kind::Client => {
            b.append_extension(ExtendedKeyUsage::new().client_auth().build()?)?;
        }
    }
    b.sign(issuer.map_or(&key, |i| &i.key), MessageDigest::sha256())?;
    Ok(Issued {
        cert: b.build(),
        key,
    })
}

#[derive(Clone, Copy)]
enum Kind {
    Ca,
    Server,
    Client,
}

fn write(path: &Path, data: &[u8], mode: u32) {
    fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl Certs {
    pub fn generate(dir: &Path) -> Certs {
        let make = || -> Result<_, ErrorStack> {
            let ca = issue(&[("O", "Test"), ("CN", "Test CA")], None, Kind::Ca)?;
            let server = issue(
                &[("O", "Test"), ("CN", "localhost")],
                Some(&ca),
                Kind::Server,
            )?;
            let client = issue(&[("O", "Test"), ("CN", "client")], Some(&ca), Kind::Client)?;
            let other_ca = issue(&[("O", "Other"), ("CN", "Other CA")], None, Kind::Ca)?;
            let other = issue(
                &[("O", "Other"), ("CN", "other")],
                Some(&other_ca),
                Kind::Client,
            )?;
            Ok((ca, server, client, other))
        };
        let (ca, server, client, other) = make().expect("make test certificates");
        let c = Certs {
            ca_crt: dir.join("ca.crt"),
            server_crt: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_crt: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            other_client_crt: dir.join("other-client.crt"),
            other_client_key: dir.join("other-client.key"),
        };
        let pem = |x: &X509| x.to_pem().expect("cert to PEM");
        let key = |k: &PKey<Private>| k.private_key_to_pem_pkcs8().expect("key to PEM");
        write(&c.ca_crt, &pem(&ca.cert), 0o644);
        write(&c.server_crt, &pem(&server.cert), 0o644);
        write(&c.server_key, &key(&server.key), 0o600);
        write(&c.client_crt, &pem(&client.cert), 0o644);
        write(&c.client_key, &key(&client.key), 0o600);
        write(&c.other_client_crt, &pem(&other.cert), 0o644);
        write(&c.other_client_key, &key(&other.key), 0o600);
        c
    }

    pub fn client(&self) -> (&Path, &Path) {
        (&self.client_crt, &self.client_key)
    }

    pub fn other_client(&self) -> (&Path, &Path) {
        (&self.other_client_crt, &self.other_client_key)
    }
}
