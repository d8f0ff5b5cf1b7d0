//! In-process handshakes against contexts built by `build_acceptor`: SNI selection, key
//! types, session tickets across contexts (what fork and reloads amount to), versions.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{
    Ssl, SslAcceptor, SslContext, SslMethod, SslSession, SslSessionCacheMode, SslVerifyMode,
    SslVersion,
};
use openssl::x509::extension::SubjectAlternativeName;
use openssl::x509::{X509Name, X509};

use super::*;
use crate::settings::{CertKey, SniSettings, TlsSettings, TlsVersion, VerifyClient};

#[derive(Clone, Copy)]
enum KeyType {
    Ec,
    Rsa,
}

/// A self-signed certificate for `cn` (also its SAN), written as `<stem>.crt`/`<stem>.key`.
fn make_cert(dir: &Path, stem: &str, cn: &str, org: &str, kt: KeyType) -> CertKey {
    let key: PKey<Private> = match kt {
        KeyType::Ec => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).expect("group");
            PKey::from_ec_key(EcKey::generate(&group).expect("ec")).expect("pkey")
        }
        KeyType::Rsa => PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey"),
    };
    let mut name = X509Name::builder().expect("name");
    name.append_entry_by_text("O", org).expect("O");
    name.append_entry_by_text("CN", cn).expect("CN");
    let name = name.build();
    let mut b = X509::builder().expect("x509");
    b.set_version(2).expect("v3");
    let serial = BigNum::from_u32(rand_u32()).expect("bn").to_asn1_integer();
    b.set_serial_number(&serial.expect("serial"))
        .expect("serial");
    b.set_subject_name(&name).expect("subject");
    b.set_issuer_name(&name).expect("issuer");
    b.set_pubkey(&key).expect("pubkey");
    b.set_not_before(&Asn1Time::days_from_now(0).expect("t"))
        .expect("nb");
    b.set_not_after(&Asn1Time::days_from_now(30).expect("t"))
        .expect("na");
    let san = SubjectAlternativeName::new()
        .dns(cn.trim_start_matches("*."))
        .build(&b.x509v3_context(None, None))
        .expect("san");
    b.append_extension(san).expect("ext");
    b.sign(&key, MessageDigest::sha256()).expect("sign");
    let cert = b.build();
    let ck = CertKey {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
        ocsp_response: None,
    };
    std::fs::write(&ck.cert, cert.to_pem().expect("pem")).expect("write");
    std::fs::write(&ck.key, key.private_key_to_pem_pkcs8().expect("pem")).expect("write");
    ck
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    openssl::rand::rand_bytes(&mut b).expect("rand");
    u32::from_be_bytes(b) >> 1
}

fn settings(default: &CertKey) -> TlsSettings {
    TlsSettings {
        cert: default.cert.clone(),
        key: default.key.clone(),
        ciphers: None,
        ciphersuites: None,
        client_ca: None,
        verify_client: VerifyClient::None,
        min_version: TlsVersion::Tls12,
        verify_depth: 1,
        session_context: None,
        ocsp_response: None,
        extra_certs: Vec::new(),
        options: Vec::new(),
        sni: Vec::new(),
        sni_dir: None,
        ticket_key_file: None,
    }
}

fn sni(names: &[&str], certs: Vec<CertKey>) -> SniSettings {
    SniSettings {
        names: names.iter().map(|n| n.to_string()).collect(),
        certs,
        ciphers: None,
        client_ca: None,
        verify_client: None,
    }
}

const ADDR: &str = "127.0.0.1:8443";

fn acceptor(tls: &TlsSettings) -> SslAcceptor {
    build_acceptor(tls, ADDR.parse().expect("addr")).expect("acceptor")
}

/// Serve `n` connections with `acceptor`: handshake, write one byte, close.
fn serve(acceptor: SslAcceptor, n: usize) -> (SocketAddr, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handle = std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((s, _)) = listener.accept() else {
                return;
            };
            if let Ok(mut tls) = acceptor.accept(s) {
                let _ = tls.write_all(b"x");
                let _ = tls.shutdown();
            }
        }
    });
    (addr, handle)
}

struct Outcome {
    subject: String,
    reused: bool,
    version: &'static str,
    session: Option<SslSession>,
    cert_key_bits: u32,
    cipher: String,
}

#[derive(Default)]
struct Client<'a> {
    sni: Option<&'a str>,
    session: Option<&'a SslSession>,
    max: Option<SslVersion>,
    sigalgs: Option<&'a str>,
    security_level_0: bool,
}

fn connect(addr: SocketAddr, c: Client) -> Result<Outcome, String> {
    let mut b = SslContext::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    // As s_client does: a session left in the internal cache is marked not resumable when
    // the client context is freed.
    b.set_session_cache_mode(SslSessionCacheMode::CLIENT | SslSessionCacheMode::NO_INTERNAL_STORE);
    let latest: Arc<Mutex<Option<SslSession>>> = Arc::default();
    let sink = Arc::clone(&latest);
    b.set_new_session_callback(move |_, s| *sink.lock().expect("lock") = Some(s));
    if let Some(v) = c.max {
        b.set_max_proto_version(Some(v))
            .map_err(|e| e.to_string())?;
        b.set_min_proto_version(Some(v))
            .map_err(|e| e.to_string())?;
    }
    if c.security_level_0 {
        b.set_security_level(0);
        b.set_cipher_list("DEFAULT@SECLEVEL=0")
            .map_err(|e| e.to_string())?;
    }
    if let Some(algs) = c.sigalgs {
        b.set_sigalgs_list(algs).map_err(|e| e.to_string())?;
    }
    let ctx = b.build();
    let mut ssl = Ssl::new(&ctx).map_err(|e| e.to_string())?;
    if let Some(name) = c.sni {
        ssl.set_hostname(name).map_err(|e| e.to_string())?;
    }
    if let Some(s) = c.session {
        // SAFETY: the session comes from a client context of the same method and settings.
        unsafe { ssl.set_session(s) }.map_err(|e| e.to_string())?;
    }
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    let mut tls = ssl.connect(tcp).map_err(|e| e.to_string())?;
    let mut one = [0u8; 1];
    tls.read_exact(&mut one).map_err(|e| e.to_string())?;
    let peer = tls.ssl().peer_certificate().ok_or("no peer certificate")?;
    let subject = crate::session::oneline(peer.subject_name());
    let cert_key_bits = peer.public_key().map(|k| k.bits()).unwrap_or(0);
    // A client session dropped without close_notify is marked not resumable (TLS 1.2).
    let _ = tls.shutdown();
    let session = latest
        .lock()
        .expect("lock")
        .take()
        .or_else(|| tls.ssl().session().map(|s| s.to_owned()));
    let cipher = tls
        .ssl()
        .current_cipher()
        .map_or(String::new(), |c| c.name().to_string());
    Ok(Outcome {
        cipher,
        subject,
        reused: tls.ssl().session_reused(),
        version: tls.ssl().version_str(),
        session,
        cert_key_bits,
    })
}

#[test]
fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let default = make_cert(d, "default", "default.test", "default", KeyType::Ec);
    let mut tls = settings(&default);
    tls.sni = vec![
        sni(
            &["api.example.com", "API2.example.com"],
            vec![make_cert(d, "api", "api.example.com", "api", KeyType::Ec)],
        ),
        sni(
            &["*.apps.example.com"],
            vec![make_cert(
                d,
                "apps",
                "*.apps.example.com",
                "apps",
                KeyType::Ec,
            )],
        ),
    ];
    let sni_dir = d.join("sni");
    std::fs::create_dir(&sni_dir).expect("mkdir");
    make_cert(
        &sni_dir,
        "shop.example.org",
        "shop.example.org",
        "dir",
        KeyType::Ec,
    );
    // A file for a name an entry has: the entry wins.
    make_cert(
        &sni_dir,
        "api.example.com",
        "api.example.com",
        "dir",
        KeyType::Ec,
    );
    tls.sni_dir = Some(sni_dir);
    let (addr, server) = serve(acceptor(&tls), 7);
    let org = |name: Option<&str>| {
        let o = connect(
            addr,
            Client {
                sni: name,
                ..Default::default()
            },
        )
        .expect("handshake");
        o.subject
            .split('/')
            .find_map(|p| p.strip_prefix("O="))
            .map(str::to_string)
            .expect("O=")
    };
    assert_eq!(org(Some("api.example.com")), "api");
    assert_eq!(org(Some("api2.example.com")), "api");
    assert_eq!(org(Some("x.apps.example.com")), "apps");
    assert_eq!(org(Some("shop.example.org")), "dir");
    assert_eq!(org(Some("a.b.apps.example.com")), "default");
    assert_eq!(org(Some("unknown.test")), "default");
    assert_eq!(org(None), "default");
    server.join().expect("server");
}

#[test]
fn one_certificate_per_key_type_chosen_by_the_client() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let ec = make_cert(d, "ec", "dual.test", "ec", KeyType::Ec);
    let rsa = make_cert(d, "rsa", "dual.test", "rsa", KeyType::Rsa);
    let mut tls = settings(&ec);
    tls.extra_certs = vec![rsa.clone()];
    let (addr, server) = serve(acceptor(&tls), 2);
    let bits = |algs| {
        connect(
            addr,
            Client {
                sigalgs: Some(algs),
                ..Default::default()
            },
        )
        .expect("handshake")
        .cert_key_bits
    };
    assert_eq!(bits("ECDSA+SHA256"), 256);
    assert_eq!(bits("RSA-PSS+SHA256:RSA+SHA256"), 2048);
    server.join().expect("server");

    // Two of one type is a configuration error naming both files.
    let other_ec = make_cert(d, "ec2", "dual.test", "ec2", KeyType::Ec);
    tls.extra_certs = vec![other_ec];
    let err = build_acceptor(&tls, ADDR.parse().expect("addr"))
        .err()
        .expect("same type")
        .to_string();
    assert!(err.contains("ec.crt") && err.contains("ec2.crt"), "{err}");
}

fn write_keys(path: &Path, keys: &[[u8; 80]]) {
    std::fs::write(path, keys.concat()).expect("write keys");
}

fn random_key() -> [u8; 80] {
    let mut k = [0u8; 80];
    openssl::rand::rand_bytes(&mut k).expect("rand");
    k
}

/// A session from one context, offered to another built separately (another generation,
/// or another machine): resumed only when both read the same ticket key file.
fn resumes(
    first: &TlsSettings,
    second: &TlsSettings,
    version: SslVersion,
    sni: Option<&str>,
) -> bool {
    let (a, sa) = serve(acceptor(first), 1);
    let full = connect(
        a,
        Client {
            max: Some(version),
            sni,
            ..Default::default()
        },
    )
    .expect("full handshake");
    sa.join().expect("server");
    assert!(!full.reused);
    let session = full.session.expect("a session");
    let (b, sb) = serve(acceptor(second), 1);
    let again = connect(
        b,
        Client {
            max: Some(version),
            session: Some(&session),
            sni,
            ..Default::default()
        },
    )
    .expect("second handshake");
    sb.join().expect("server");
    again.reused
}

#[test]
fn ticket_key_file_resumes_across_contexts_and_rotations() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let default = make_cert(d, "srv", "srv.test", "srv", KeyType::Ec);
    let (k1, k2) = (random_key(), random_key());
    let file1 = d.join("t1.key");
    write_keys(&file1, &[k1]);
    let rotated = d.join("t2.key");
    write_keys(&rotated, &[k2, k1]);
    let other = d.join("t3.key");
    write_keys(&other, &[k2]);

    let plain = settings(&default);
    let with = |f: &PathBuf| TlsSettings {
        ticket_key_file: Some(f.clone()),
        ..plain.clone()
    };
    for v in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        // The same context (what every forked worker shares): always resumed.
        let shared = acceptor(&plain);
        let (a, s) = serve(shared, 2);
        let full = connect(
            a,
            Client {
                max: Some(v),
                ..Default::default()
            },
        )
        .expect("full");
        let again = connect(
            a,
            Client {
                max: Some(v),
                session: full.session.as_ref(),
                ..Default::default()
            },
        )
        .expect("again");
        s.join().expect("server");
        assert!(again.reused, "{v:?}: same context");

        assert!(!resumes(&plain, &plain, v, None), "{v:?}: random keys");
        assert!(
            resumes(&with(&file1), &with(&file1), v, None),
            "{v:?}: same file"
        );
        assert!(
            resumes(&with(&file1), &with(&rotated), v, None),
            "{v:?}: old key decrypts"
        );
        assert!(
            !resumes(&with(&file1), &with(&other), v, None),
            "{v:?}: key gone"
        );
    }
}

#[test]
fn sni_contexts_resume_with_client_certificates_requested() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let default = make_cert(d, "srv", "srv.test", "srv", KeyType::Ec);
    let api = make_cert(d, "api", "api.test", "api", KeyType::Ec);
    let keys = d.join("t.key");
    write_keys(&keys, &[random_key()]);
    let mut tls = settings(&default);
    // Client certificates requested (optional): needs the session-id context everywhere.
    tls.client_ca = Some(default.cert.clone());
    tls.verify_client = VerifyClient::Optional;
    tls.ticket_key_file = Some(keys);
    tls.sni = vec![sni(&["api.test"], vec![api])];
    for v in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        assert!(resumes(&tls, &tls, v, Some("api.test")), "{v:?}: sni name");
        assert!(resumes(&tls, &tls, v, None), "{v:?}: default");
    }
}

#[test]
fn versions_below_1_2_only_when_asked() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let default = make_cert(d, "srv", "srv.test", "srv", KeyType::Ec);
    let tls = settings(&default);
    let old = |tls: &TlsSettings, v| {
        let (a, s) = serve(acceptor(tls), 1);
        let r = connect(
            a,
            Client {
                max: Some(v),
                security_level_0: true,
                ..Default::default()
            },
        );
        s.join().expect("server");
        r.map(|o| o.version)
    };
    assert!(old(&tls, SslVersion::TLS1).is_err());
    assert!(old(&tls, SslVersion::TLS1_1).is_err());
    assert_eq!(old(&tls, SslVersion::TLS1_2), Ok("TLSv1.2"));
    let legacy = TlsSettings {
        min_version: TlsVersion::Tls10,
        ..tls.clone()
    };
    assert_eq!(old(&legacy, SslVersion::TLS1), Ok("TLSv1"));
    assert_eq!(old(&legacy, SslVersion::TLS1_1), Ok("TLSv1.1"));
    let no13 = TlsSettings {
        options: vec![crate::TlsOption::NoTls13],
        ..tls.clone()
    };
    assert!(old(&no13, SslVersion::TLS1_3).is_err());
    assert_eq!(old(&tls, SslVersion::TLS1_3), Ok("TLSv1.3"));
}

#[test]
fn configuration_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let a = make_cert(d, "a", "a.test", "a", KeyType::Ec);
    let b = make_cert(d, "b", "b.test", "b", KeyType::Ec);
    let err = |tls: &TlsSettings| {
        build_acceptor(tls, ADDR.parse().expect("addr"))
            .err()
            .expect("an error")
            .to_string()
    };
    let mut tls = settings(&a);
    tls.key = b.key.clone();
    let msg = err(&tls);
    assert!(msg.contains("b.key") && msg.contains("a.crt"), "{msg}");

    let mut tls = settings(&a);
    tls.sni = vec![
        sni(&["x.test"], vec![a.clone()]),
        sni(&["X.test"], vec![b.clone()]),
    ];
    assert!(err(&tls).contains("listed twice"), "{}", err(&tls));
    tls.sni = vec![sni(&["bad name"], vec![a.clone()])];
    assert!(err(&tls).contains("bad name"), "{}", err(&tls));

    let mut tls = settings(&a);
    let short = d.join("short.key");
    std::fs::write(&short, [0u8; 79]).expect("write");
    tls.ticket_key_file = Some(short);
    let msg = err(&tls);
    assert!(
        msg.contains("short.key") && msg.contains("79 bytes"),
        "{msg}"
    );

    let mut tls = settings(&a);
    let junk = d.join("junk.ocsp");
    std::fs::write(&junk, b"not der").expect("write");
    tls.ocsp_response = Some(junk);
    let msg = err(&tls);
    assert!(msg.contains("junk.ocsp"), "{msg}");
}

/// A session made on a name without client certificates must not let a client into a name
/// that requires them (nginx's CVE-2025-23419): resumption across SNI contexts is refused.
#[test]
fn resumption_does_not_cross_into_a_name_with_other_client_verification() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let default = make_cert(d, "srv", "srv.test", "srv", KeyType::Ec);
    let open = make_cert(d, "open", "open.test", "open", KeyType::Ec);
    let strict = make_cert(d, "strict", "strict.test", "strict", KeyType::Ec);
    let mut tls = settings(&default);
    tls.sni = vec![
        sni(&["open.test"], vec![open]),
        SniSettings {
            client_ca: Some(strict.cert.clone()),
            verify_client: Some(VerifyClient::Required),
            ..sni(&["strict.test"], vec![strict])
        },
    ];
    for v in [SslVersion::TLS1_2, SslVersion::TLS1_3] {
        let (a, s) = serve(acceptor(&tls), 2);
        let full = connect(
            a,
            Client {
                max: Some(v),
                sni: Some("open.test"),
                ..Default::default()
            },
        )
        .expect("full handshake on the open name");
        let crossed = connect(
            a,
            Client {
                max: Some(v),
                sni: Some("strict.test"),
                session: full.session.as_ref(),
                ..Default::default()
            },
        );
        s.join().expect("server");
        match crossed {
            Ok(o) => panic!(
                "{v:?}: got into strict.test without a client certificate (reused {}, {})",
                o.reused, o.subject
            ),
            Err(e) => eprintln!("{v:?}: refused as it should: {e}"),
        }
    }
}

#[test]
fn sni_entries_have_their_own_ciphers_and_client_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let default = make_cert(d, "srv", "srv.test", "srv", KeyType::Ec);
    let strong = make_cert(d, "strong", "strong.test", "strong", KeyType::Ec);
    let strict = make_cert(d, "strict", "strict.test", "strict", KeyType::Ec);
    let mut tls = settings(&default);
    tls.sni = vec![
        SniSettings {
            ciphers: Some("ECDHE-ECDSA-AES256-GCM-SHA384".into()),
            ..sni(&["strong.test"], vec![strong])
        },
        SniSettings {
            client_ca: Some(strict.cert.clone()),
            ..sni(&["strict.test"], vec![strict])
        },
    ];
    let (a, s) = serve(acceptor(&tls), 3);
    let cipher = |name| {
        connect(
            a,
            Client {
                max: Some(SslVersion::TLS1_2),
                sni: Some(name),
                ..Default::default()
            },
        )
        .map(|o| o.cipher)
    };
    assert_eq!(
        cipher("srv.test"),
        Ok("ECDHE-ECDSA-AES128-GCM-SHA256".into())
    );
    assert_eq!(
        cipher("strong.test"),
        Ok("ECDHE-ECDSA-AES256-GCM-SHA384".into())
    );
    // A CA of its own requests client certificates (optional): without one, it still works.
    assert!(cipher("strict.test").is_ok());
    s.join().expect("server");
}
