//! Free ports from the kernel.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};

/// A TCP port on 127.0.0.1 that was free a moment ago (the kernel picks it).
pub fn free_port() -> u16 {
    let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .expect("bind 127.0.0.1:0 to get a free port");
    l.local_addr().expect("local_addr of probe listener").port()
}

/// A free privileged port (600..1000) on 127.0.0.1. Needs root.
pub fn free_low_port() -> u16 {
    for _ in 0..400 {
        let mut b = [0u8; 2];
        openssl::rand::rand_bytes(&mut b).expect("random bytes");
        let port = 600 + (u16::from_le_bytes(b) % 400);
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port found in 600..1000");
}

/// True when 127.0.0.1:port can be bound right now.
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok()
}
