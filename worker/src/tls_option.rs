//! `ssl-option`: names for the OpenSSL switches operators change. uWSGI's `ssl-option` takes
//! raw `SSL_OP_*` numbers; a number is accepted when every bit in it has a name here.

use openssl::ssl::SslOptions;

/// One `ssl-option` switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsOption {
    /// No session tickets: resumption only through each worker's session-id cache.
    NoTickets,
    /// No server-side session-id cache (tickets still work unless `no-tickets`).
    NoSessionCache,
    /// Prefer ChaCha20 when the client lists it first (clients without AES hardware).
    PrioritizeChacha,
    NoTls13,
    NoTls12,
    /// The server's cipher order wins (on by default).
    CipherServerPreference,
    /// The client's cipher order wins.
    NoCipherServerPreference,
    /// On by default; accepted so a configuration can say it.
    NoCompression,
    /// On by default; accepted so a configuration can say it.
    NoRenegotiation,
    /// Treat a peer's close without close_notify as a clean end of stream.
    IgnoreUnexpectedEof,
}

/// Every name, with its switch and the `SSL_OP_*` bit it maps to (for uWSGI's numbers).
const NAMES: &[(&str, TlsOption, SslOptions)] = &[
    ("no-tickets", TlsOption::NoTickets, SslOptions::NO_TICKET),
    (
        "no-session-cache",
        TlsOption::NoSessionCache,
        SslOptions::empty(),
    ),
    (
        "prioritize-chacha",
        TlsOption::PrioritizeChacha,
        SslOptions::PRIORITIZE_CHACHA,
    ),
    ("no-tlsv1.3", TlsOption::NoTls13, SslOptions::NO_TLSV1_3),
    ("no-tlsv1.2", TlsOption::NoTls12, SslOptions::NO_TLSV1_2),
    (
        "cipher-server-preference",
        TlsOption::CipherServerPreference,
        SslOptions::CIPHER_SERVER_PREFERENCE,
    ),
    (
        "no-cipher-server-preference",
        TlsOption::NoCipherServerPreference,
        SslOptions::empty(),
    ),
    (
        "no-compression",
        TlsOption::NoCompression,
        SslOptions::NO_COMPRESSION,
    ),
    (
        "no-renegotiation",
        TlsOption::NoRenegotiation,
        SslOptions::NO_RENEGOTIATION,
    ),
    (
        "ignore-unexpected-eof",
        TlsOption::IgnoreUnexpectedEof,
        SslOptions::IGNORE_UNEXPECTED_EOF,
    ),
];

impl TlsOption {
    /// A name (case does not matter, `_` reads as `-`), or a uWSGI-style number whose bits
    /// all have names. The error names the value and lists the names.
    pub fn parse(value: &str) -> Result<Vec<TlsOption>, String> {
        let v = value.trim();
        if let Ok(n) = v.parse::<u64>() {
            return from_bits(n).ok_or_else(|| {
                format!(
                    "ssl-option {value:?}: a number must be made of known SSL_OP_* bits; \
                     use names: {}",
                    names()
                )
            });
        }
        let norm = v.to_ascii_lowercase().replace('_', "-");
        NAMES
            .iter()
            .find(|(name, _, _)| *name == norm)
            .map(|(_, opt, _)| vec![*opt])
            .ok_or_else(|| format!("unknown ssl-option {value:?}; known: {}", names()))
    }

    pub fn name(self) -> &'static str {
        NAMES
            .iter()
            .find(|(_, opt, _)| *opt == self)
            .map_or("?", |(name, _, _)| name)
    }
}

fn names() -> String {
    NAMES
        .iter()
        .map(|(n, _, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

fn from_bits(n: u64) -> Option<Vec<TlsOption>> {
    let mut left = n;
    let mut out = Vec::new();
    for (_, opt, bits) in NAMES {
        let b = bits.bits();
        if b != 0 && n & b == b {
            out.push(*opt);
            left &= !b;
        }
    }
    (left == 0 && !out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            TlsOption::parse("no-tickets").expect("known"),
            vec![TlsOption::NoTickets]
        );
        assert_eq!(
            TlsOption::parse("No_TLSv1.3").expect("known"),
            vec![TlsOption::NoTls13]
        );
        for (name, opt, _) in NAMES {
            assert_eq!(TlsOption::parse(name).expect("listed"), vec![*opt]);
            assert_eq!(opt.name(), *name);
        }
    }

    #[test]
    fn unknown_names_are_named_in_the_error() {
        let err = TlsOption::parse("no-sslv2-please").expect_err("unknown");
        assert!(
            err.contains("no-sslv2-please") && err.contains("no-tickets"),
            "{err}"
        );
    }

    #[test]
    fn uwsgi_numbers_map_to_names() {
        let ticket = SslOptions::NO_TICKET.bits();
        let chacha = SslOptions::PRIORITIZE_CHACHA.bits();
        let got = TlsOption::parse(&(ticket | chacha).to_string()).expect("known bits");
        assert!(got.contains(&TlsOption::NoTickets) && got.contains(&TlsOption::PrioritizeChacha));
        assert!(TlsOption::parse("0").is_err());
        assert!(TlsOption::parse(&(1u64 << 62).to_string()).is_err());
    }
}
