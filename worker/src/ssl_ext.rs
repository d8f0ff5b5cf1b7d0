//! libssl calls the openssl crate does not wrap.

use foreign_types::ForeignTypeRef;
use openssl::ssl::SslRef;

extern "C" {
    // libssl 3 (and 1.1): frees the record buffers of a connection that holds no pending
    // data; returns 0 (and frees nothing) otherwise.
    fn SSL_free_buffers(ssl: *mut openssl_sys::SSL) -> libc::c_int;
    // libssl 1.1+: 1 if any bytes wait in the SSL, decrypted or not (read-ahead).
    fn SSL_has_pending(ssl: *const openssl_sys::SSL) -> libc::c_int;
}

/// Bytes of the peer wait inside OpenSSL (a record decrypted but unread, or read ahead).
pub fn has_pending(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a valid SSL for the duration of the call, which only reads it.
    unsafe { SSL_has_pending(ssl.as_ptr()) == 1 }
}

/// Give back the read and write record buffers (~34 KiB) of an idle connection.
/// `SSL_MODE_RELEASE_BUFFERS` only does so after application data was read, so a
/// connection parked right after its handshake would keep its read buffer.
pub fn free_buffers(ssl: &SslRef) -> bool {
    // SAFETY: `ssl` is a valid SSL for the duration of the call; SSL_free_buffers only
    // frees buffers it owns and that hold no data.
    unsafe { SSL_free_buffers(ssl.as_ptr()) == 1 }
}
