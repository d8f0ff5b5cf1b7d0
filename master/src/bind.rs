use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
    SockaddrStorage,
};

use crate::error::StartError;

/// A listening socket bound by the master and shared by every worker through fork.
#[derive(Debug)]
pub struct Listener {
    pub addr: SocketAddr,
    pub socket: TcpListener,
}

/// Bind every socket, in order. Listeners are non-blocking: workers wait on them with epoll
/// and several processes race for each connection.
pub fn bind_all(
    addrs: &[SocketAddr],
    backlog: i32,
    defer_accept_secs: u32,
) -> Result<Vec<Listener>, StartError> {
    addrs
        .iter()
        .map(|&addr| {
            bind_one(addr, backlog, defer_accept_secs)
                .map(|socket| Listener { addr, socket })
                .map_err(|source| StartError::Bind { addr, source })
        })
        .collect()
}

fn bind_one(addr: SocketAddr, backlog: i32, defer_accept_secs: u32) -> nix::Result<TcpListener> {
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    if addr.is_ipv6() {
        // So that [::]:443 can sit beside 0.0.0.0:443.
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    if defer_accept_secs > 0 {
        set_defer_accept(&fd, defer_accept_secs)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::new(backlog).unwrap_or(Backlog::MAXCONN))?;
    Ok(TcpListener::from(fd))
}

fn set_defer_accept(fd: &OwnedFd, secs: u32) -> nix::Result<()> {
    let value: libc::c_int = secs.try_into().unwrap_or(libc::c_int::MAX);
    // SAFETY: fd is a valid socket; value lives across the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    nix::errno::Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_v4_and_v6_on_one_port() {
        let v4 = bind_all(&["127.0.0.1:0".parse().expect("addr")], 16, 1).expect("bind v4");
        let port = v4[0].socket.local_addr().expect("local addr").port();
        // [::1] may be absent in some sandboxes; only check when it is.
        if TcpListener::bind("[::1]:0").is_ok() {
            let v6: SocketAddr = format!("[::1]:{port}").parse().expect("addr");
            bind_all(&[v6], 16, 1).expect("bind v6 beside v4");
        }
    }

    #[test]
    fn a_taken_port_names_the_address() {
        let first = bind_all(&["127.0.0.1:0".parse().expect("addr")], 16, 0).expect("bind");
        let addr = first[0].socket.local_addr().expect("local addr");
        // SO_REUSEADDR does not allow two listeners on one address.
        let err = bind_all(&[addr], 16, 0).expect_err("second bind must fail");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }
}
