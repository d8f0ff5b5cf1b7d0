//! Session-ticket keys from `ticket-key-file` (SPEC §3).
//!
//! Without the file, OpenSSL makes random ticket keys when a context is created. Contexts are
//! built in the master and inherited through fork, so every worker of a generation shares
//! them, but a reload (new contexts) or another machine cannot decrypt the tickets. With the
//! file, every context uses the keys it holds: tickets survive reloads and are accepted by
//! every machine that shares the file.
//!
//! The file holds one or more 80-byte keys, nginx's `ssl_session_ticket_key` format: 16 bytes
//! of key name, 32 bytes of HMAC-SHA256 secret, 32 bytes of AES-256-CBC key
//! (`openssl rand 80 > ticket.key`). The first key encrypts new tickets; every key decrypts,
//! and a ticket decrypted with another than the first is renewed. To rotate: put a new key
//! first, keep the old one after it, reload; drop the old one a ticket lifetime later.
//!
//! The openssl crate does not expose ticket keys, so this module calls
//! `SSL_CTX_set_tlsext_ticket_key_evp_cb` (libssl 3) itself, with a callback that does what
//! nginx's `ngx_ssl_ticket_key_callback` does.

use std::ffi::{c_char, c_int, c_uchar, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use foreign_types::ForeignTypeRef;
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{SslContext, SslContextBuilder, SslRef};
use openssl_sys as ffi;

use crate::files::{self, FileKind};
use crate::tls::TlsError;

/// Size of one key in the file.
pub const KEY_LEN: usize = 80;
const NAME_LEN: usize = 16;
const SECRET_LEN: usize = 32;
/// AES-CBC's IV, EVP_MAX_IV_LENGTH in OpenSSL's headers.
const IV_LEN: usize = 16;

/// The callback `SSL_CTX_set_tlsext_ticket_key_evp_cb` takes (ssl.h, OpenSSL 3):
/// `int cb(SSL *s, unsigned char key_name[16], unsigned char iv[EVP_MAX_IV_LENGTH],
/// EVP_CIPHER_CTX *ctx, EVP_MAC_CTX *hctx, int enc)`.
type TicketKeyCallback = unsafe extern "C" fn(
    *mut ffi::SSL,
    *mut c_uchar,
    *mut c_uchar,
    *mut ffi::EVP_CIPHER_CTX,
    *mut ffi::EVP_MAC_CTX,
    c_int,
) -> c_int;

extern "C" {
    /// libssl 3: install the ticket key callback of a context. Returns 1.
    fn SSL_CTX_set_tlsext_ticket_key_evp_cb(
        ctx: *mut ffi::SSL_CTX,
        cb: Option<TicketKeyCallback>,
    ) -> c_int;
    /// libcrypto 3 (not declared by openssl-sys): a UTF-8 string parameter; `bsize` 0 means
    /// "up to the terminating NUL".
    fn OSSL_PARAM_construct_utf8_string(
        key: *const c_char,
        buf: *mut c_char,
        bsize: usize,
    ) -> ffi::OSSL_PARAM;
}

/// One ticket key.
#[derive(Clone, PartialEq, Eq)]
struct TicketKey {
    name: [u8; NAME_LEN],
    hmac: [u8; SECRET_LEN],
    aes: [u8; SECRET_LEN],
}

/// The keys of a `ticket-key-file`, first one encrypting. Never empty.
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKeys {
    keys: Vec<TicketKey>,
}

impl std::fmt::Debug for TicketKeys {
    /// Key material never reaches a log: only the count.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TicketKeys({} keys)", self.keys.len())
    }
}

impl TicketKeys {
    /// Read and check a key file.
    pub fn load(path: &Path) -> Result<TicketKeys, TlsError> {
        let bytes = files::read(path, FileKind::Secret)?;
        TicketKeys::parse(&bytes).map_err(|reason| TlsError::TicketKeys {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// One or more 80-byte keys, back to back.
    pub fn parse(bytes: &[u8]) -> Result<TicketKeys, String> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(KEY_LEN) {
            return Err(format!(
                "{} bytes: expected one or more {KEY_LEN}-byte keys \
                 (make one with `openssl rand {KEY_LEN}`)",
                bytes.len()
            ));
        }
        let keys: Vec<TicketKey> = bytes
            .chunks_exact(KEY_LEN)
            .map(|k| {
                let mut key = TicketKey {
                    name: [0; NAME_LEN],
                    hmac: [0; SECRET_LEN],
                    aes: [0; SECRET_LEN],
                };
                key.name.copy_from_slice(&k[..NAME_LEN]);
                key.hmac
                    .copy_from_slice(&k[NAME_LEN..NAME_LEN + SECRET_LEN]);
                key.aes.copy_from_slice(&k[NAME_LEN + SECRET_LEN..]);
                key
            })
            .collect();
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|earlier| earlier.name == k.name) {
                return Err(format!(
                    "keys {} and {} have the same name (first 16 bytes)",
                    keys.iter().position(|e| e.name == k.name).unwrap_or(0) + 1,
                    i + 1
                ));
            }
        }
        Ok(TicketKeys { keys })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key named `name`, and whether it is the encrypting (first) one.
    fn find(&self, name: &[u8]) -> Option<(&TicketKey, bool)> {
        self.keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.name == name)
            .map(|(i, k)| (k, i == 0))
    }
}

/// The context ex-data slot that holds a context's keys, made once per process.
fn keys_index() -> Result<Index<SslContext, Arc<TicketKeys>>, ErrorStack> {
    static INDEX: OnceLock<Index<SslContext, Arc<TicketKeys>>> = OnceLock::new();
    if let Some(index) = INDEX.get() {
        return Ok(*index);
    }
    let index = SslContext::new_ex_index()?;
    Ok(*INDEX.get_or_init(|| index))
}

/// Make `builder`'s context encrypt and decrypt session tickets with `keys`.
pub fn install(builder: &mut SslContextBuilder, keys: Arc<TicketKeys>) -> Result<(), ErrorStack> {
    builder.set_ex_data(keys_index()?, keys);
    // SAFETY: `builder.as_ptr()` is the live SSL_CTX the builder owns; the callback is a
    // plain function with the signature libssl expects (see `TicketKeyCallback`), and the
    // keys it reads live in the context's ex data, which the context owns and frees.
    let rc = unsafe { SSL_CTX_set_tlsext_ticket_key_evp_cb(builder.as_ptr(), Some(callback)) };
    if rc != 1 {
        return Err(ErrorStack::get());
    }
    Ok(())
}

/// The ticket key callback. libssl calls it with `enc = 1` to encrypt a new ticket (we name
/// the key, pick the IV, and set up AES-256-CBC and HMAC-SHA256) and with `enc = 0` to decrypt
/// one (we find the key by the name in the ticket). Returns, as libssl defines: -1 error,
/// 0 "no such key: full handshake" (decrypt) or "no ticket" (encrypt), 1 success, 2 success
/// but issue a new ticket (decrypted with an older key).
unsafe extern "C" fn callback(
    ssl: *mut ffi::SSL,
    key_name: *mut c_uchar,
    iv: *mut c_uchar,
    cipher: *mut ffi::EVP_CIPHER_CTX,
    mac: *mut ffi::EVP_MAC_CTX,
    enc: c_int,
) -> c_int {
    // No panic may unwind into libssl.
    catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: libssl passes the SSL being handshaken; it outlives this call.
        let ssl = unsafe { SslRef::from_ptr(ssl) };
        let Ok(index) = keys_index() else { return -1 };
        // The current context: the one an SNI callback switched to, or the listener's. Every
        // context of a listener holds the same keys.
        let Some(keys) = ssl.ssl_context().ex_data(index) else {
            return -1;
        };
        // SAFETY: libssl passes a 16-byte key name buffer, a 16-byte (EVP_MAX_IV_LENGTH)
        // IV buffer, and cipher and MAC contexts it owns, all valid for this call; they do
        // not overlap with anything Rust holds.
        unsafe {
            if enc == 1 {
                encrypt(keys, key_name, iv, cipher, mac)
            } else {
                decrypt(keys, key_name, iv, cipher, mac)
            }
        }
    }))
    .unwrap_or(-1)
}

/// # Safety
/// Pointers as libssl passes them to the ticket key callback (see `callback`).
unsafe fn encrypt(
    keys: &TicketKeys,
    key_name: *mut c_uchar,
    iv: *mut c_uchar,
    cipher: *mut ffi::EVP_CIPHER_CTX,
    mac: *mut ffi::EVP_MAC_CTX,
) -> c_int {
    let key = &keys.keys[0];
    // SAFETY: per this function's contract, key_name has room for 16 bytes and iv for 16.
    unsafe {
        std::ptr::copy_nonoverlapping(key.name.as_ptr(), key_name, NAME_LEN);
        if ffi::RAND_bytes(iv, IV_LEN as c_int) != 1 {
            return -1;
        }
        let aes = ffi::EVP_aes_256_cbc();
        if ffi::EVP_EncryptInit_ex(cipher, aes, std::ptr::null_mut(), key.aes.as_ptr(), iv) != 1 {
            return -1;
        }
        if !set_hmac(mac, &key.hmac) {
            return -1;
        }
    }
    1
}

/// # Safety
/// Pointers as libssl passes them to the ticket key callback (see `callback`).
unsafe fn decrypt(
    keys: &TicketKeys,
    key_name: *mut c_uchar,
    iv: *mut c_uchar,
    cipher: *mut ffi::EVP_CIPHER_CTX,
    mac: *mut ffi::EVP_MAC_CTX,
) -> c_int {
    // SAFETY: per this function's contract, key_name points to the 16-byte name read from
    // the ticket.
    let name = unsafe { std::slice::from_raw_parts(key_name, NAME_LEN) };
    let Some((key, current)) = keys.find(name) else {
        // Unknown key (rotated out, or another fleet): a full handshake.
        return 0;
    };
    // SAFETY: iv holds the 16-byte IV read from the ticket; cipher and mac are libssl's.
    unsafe {
        if !set_hmac(mac, &key.hmac) {
            return -1;
        }
        let aes = ffi::EVP_aes_256_cbc();
        if ffi::EVP_DecryptInit_ex(cipher, aes, std::ptr::null_mut(), key.aes.as_ptr(), iv) != 1 {
            return -1;
        }
    }
    if current {
        1
    } else {
        2
    }
}

/// Key the HMAC context with `secret` and SHA-256.
///
/// # Safety
/// `mac` is the EVP_MAC_CTX libssl passed to the ticket key callback.
unsafe fn set_hmac(mac: *mut ffi::EVP_MAC_CTX, secret: &[u8; SECRET_LEN]) -> bool {
    let mut digest = *b"SHA256\0";
    // SAFETY: the parameter names are NUL-terminated literals; the parameters point into
    // `secret` and `digest`, which outlive the EVP_MAC_CTX_set_params call that reads them
    // (it copies the key); the array ends with the end marker.
    unsafe {
        let params = [
            ffi::OSSL_PARAM_construct_octet_string(
                c"key".as_ptr(),
                secret.as_ptr() as *mut c_void,
                SECRET_LEN,
            ),
            OSSL_PARAM_construct_utf8_string(c"digest".as_ptr(), digest.as_mut_ptr().cast(), 0),
            ffi::OSSL_PARAM_construct_end(),
        ];
        ffi::EVP_MAC_CTX_set_params(mac, params.as_ptr()) == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_bytes(seed: u8, count: usize) -> Vec<u8> {
        (0..count * KEY_LEN)
            .map(|i| {
                seed.wrapping_add((i / KEY_LEN) as u8 * 31)
                    .wrapping_add(i as u8)
            })
            .collect()
    }

    #[test]
    fn key_files_of_whole_keys_parse() {
        let keys = TicketKeys::parse(&key_bytes(1, 1)).expect("one key");
        assert_eq!(keys.len(), 1);
        let keys = TicketKeys::parse(&key_bytes(1, 3)).expect("three keys");
        assert_eq!(keys.len(), 3);
        let raw = key_bytes(1, 3);
        let (second, first) = keys.find(&raw[KEY_LEN..KEY_LEN + 16]).expect("found");
        assert!(!first);
        assert_eq!(&second.aes[..], &raw[2 * KEY_LEN - 32..2 * KEY_LEN]);
        assert_eq!(&second.hmac[..], &raw[KEY_LEN + 16..KEY_LEN + 48]);
        assert!(keys.find(&[0xee; 16]).is_none());
    }

    #[test]
    fn bad_key_files_are_refused() {
        for len in [0, 1, 48, 79, 81, 159] {
            let err = TicketKeys::parse(&vec![7; len]).expect_err("bad size");
            assert!(err.contains(&format!("{len} bytes")), "{err}");
        }
        let mut twice = key_bytes(1, 1);
        twice.extend(key_bytes(1, 1));
        assert!(TicketKeys::parse(&twice)
            .expect_err("same name")
            .contains("same name"));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let keys = TicketKeys::parse(&key_bytes(9, 2)).expect("keys");
        assert_eq!(format!("{keys:?}"), "TicketKeys(2 keys)");
    }
}
