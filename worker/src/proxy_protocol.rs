//! The PROXY protocol (HAProxy's spec, versions 1 and 2): an L4 balancer in front of us
//! (HAProxy `send-proxy`/`send-proxy-v2`, cloud load balancers) writes the client's address
//! before the TLS bytes. A listener with `proxy-protocol = true` reads exactly the header,
//! never a TLS byte, and closes a connection whose header is missing, malformed or late.
//!
//! [`parse`] is pure; [`read_header`] reads from the socket with what [`parse`] asks for.

use std::io::{ErrorKind, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The 12 bytes every v2 header starts with.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// Reading this many bytes first never reads past a header: the shortest v1 header
/// (`PROXY UNKNOWN\r\n`) has 15 bytes and a v2 header at least 16.
const FIRST_READ: usize = 12;

/// What a valid header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the header in bytes: the TLS stream starts right after.
    pub len: usize,
    /// The client's address and the address it connected to; None when the header carries
    /// none we use (v1 `UNKNOWN`, v2 `LOCAL` health checks, unspecified or unix families):
    /// the connection's own addresses stand.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
}

/// The outcome of looking at the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// A complete header.
    Done(Header),
    /// Not enough bytes yet: read until there are this many in all (never past the header).
    Need(usize),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    V1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    V2(&'static str),
    #[error("PROXY header not received in time")]
    Timeout,
    #[error("reading the PROXY header: {0}")]
    Io(ErrorKind),
}

/// Look at the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Result<Parse, ProxyError> {
    let head = &buf[..buf.len().min(FIRST_READ)];
    if V2_SIGNATURE.starts_with(head) && !head.is_empty() {
        return if buf.len() < FIRST_READ {
            Ok(Parse::Need(FIRST_READ))
        } else {
            parse_v2(buf)
        };
    }
    let prefix = &buf[..buf.len().min(V1_PREFIX.len())];
    if V1_PREFIX.starts_with(prefix) && !prefix.is_empty() {
        return if buf.len() < FIRST_READ {
            Ok(Parse::Need(FIRST_READ))
        } else {
            parse_v1(buf)
        };
    }
    if buf.is_empty() {
        return Ok(Parse::Need(FIRST_READ));
    }
    Err(ProxyError::Missing)
}

/// `PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n`, `PROXY TCP6 ...`, `PROXY UNKNOWN...`.
fn parse_v1(buf: &[u8]) -> Result<Parse, ProxyError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError::V1("no CRLF within 107 bytes"));
        }
        // One byte at a time: the header's end is not known before its CRLF.
        return Ok(Parse::Need(buf.len() + 1));
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ProxyError::V1("line ends without CRLF"));
    }
    let len = lf + 1;
    let line = std::str::from_utf8(&buf[..lf - 1]).map_err(|_| ProxyError::V1("not ASCII"))?;
    let mut fields = line.split(' ');
    fields.next(); // "PROXY", checked by `parse`
    let proto = fields.next().ok_or(ProxyError::V1("no protocol"))?;
    let ipv6 = match proto {
        "UNKNOWN" => return Ok(Parse::Done(Header { len, addrs: None })),
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let mut next = || fields.next().ok_or(ProxyError::V1("missing field"));
    let (src, dst, sport, dport) = (next()?, next()?, next()?, next()?);
    if fields.next().is_some() {
        return Err(ProxyError::V1("extra fields"));
    }
    let ip = |s: &str| -> Result<IpAddr, ProxyError> {
        let ip = if ipv6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| ProxyError::V1("bad address"))
    };
    let port = |s: &str| -> Result<u16, ProxyError> {
        // Decimal digits only, no sign, no leading zero (the spec's form).
        if s.is_empty()
            || !s.bytes().all(|b| b.is_ascii_digit())
            || (s.len() > 1 && s.starts_with('0'))
        {
            return Err(ProxyError::V1("bad port"));
        }
        s.parse().map_err(|_| ProxyError::V1("bad port"))
    };
    let source = SocketAddr::new(ip(src)?, port(sport)?);
    let destination = SocketAddr::new(ip(dst)?, port(dport)?);
    Ok(Parse::Done(Header {
        len,
        addrs: Some((source, destination)),
    }))
}

/// Signature, version/command, family/protocol, length (big endian), addresses, TLVs.
fn parse_v2(buf: &[u8]) -> Result<Parse, ProxyError> {
    if buf[..FIRST_READ] != V2_SIGNATURE {
        return Err(ProxyError::V2("bad signature"));
    }
    if buf.len() < 16 {
        return Ok(Parse::Need(16));
    }
    let (ver_cmd, fam) = (buf[12], buf[13]);
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2("version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(ProxyError::V2("unknown command")),
    };
    let body = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + body;
    if buf.len() < len {
        return Ok(Parse::Need(len));
    }
    let a = &buf[16..len];
    let addrs = match fam {
        // TCP over IPv4: 4 + 4 address bytes, 2 + 2 port bytes.
        0x11 => {
            if a.len() < 12 {
                return Err(ProxyError::V2("IPv4 addresses truncated"));
            }
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        // TCP over IPv6: 16 + 16 address bytes, 2 + 2 port bytes.
        0x21 => {
            if a.len() < 36 {
                return Err(ProxyError::V2("IPv6 addresses truncated"));
            }
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(32)),
                SocketAddr::new(ip(16), port(34)),
            ))
        }
        // Unspecified, or unix stream: nothing we can use as an address.
        0x00 | 0x31 => None,
        0x12 | 0x22 | 0x32 => return Err(ProxyError::V2("datagram protocol on a stream")),
        _ => return Err(ProxyError::V2("unknown address family")),
    };
    Ok(Parse::Done(Header {
        len,
        addrs: if local { None } else { addrs },
    }))
}

/// Read exactly the header from `stream` within `timeout`; the socket's read timeout is
/// `timeout` again afterwards.
pub fn read_header(stream: &TcpStream, timeout: Duration) -> Result<Header, ProxyError> {
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(64);
    let mut need = FIRST_READ;
    let result = loop {
        while buf.len() < need {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProxyError::Timeout);
            }
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| ProxyError::Io(e.kind()))?;
            let have = buf.len();
            buf.resize(need, 0);
            match (&*stream).read(&mut buf[have..]) {
                Ok(0) => return Err(ProxyError::Io(ErrorKind::UnexpectedEof)),
                Ok(n) => buf.truncate(have + n),
                Err(e) if e.kind() == ErrorKind::Interrupted => buf.truncate(have),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(ProxyError::Timeout)
                }
                Err(e) => return Err(ProxyError::Io(e.kind())),
            }
        }
        match parse(&buf)? {
            Parse::Done(h) => break h,
            Parse::Need(n) => need = n,
        }
    };
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| ProxyError::Io(e.kind()))?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(ver_cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(ver_cmd);
        out.push(fam);
        out.extend((body.len() as u16).to_be_bytes());
        out.extend(body);
        out
    }

    fn v4_body(extra: &[u8]) -> Vec<u8> {
        let mut b = vec![203, 0, 113, 7, 10, 0, 0, 1];
        b.extend(51234u16.to_be_bytes());
        b.extend(443u16.to_be_bytes());
        b.extend(extra);
        b
    }

    fn v6_body() -> Vec<u8> {
        let mut b = "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets().to_vec();
        b.extend("2001:db8::2".parse::<Ipv6Addr>().unwrap().octets());
        b.extend(40000u16.to_be_bytes());
        b.extend(8443u16.to_be_bytes());
        b
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn done(len: usize, src: &str, dst: &str) -> Result<Parse, ProxyError> {
        Ok(Parse::Done(Header {
            len,
            addrs: Some((sa(src), sa(dst))),
        }))
    }

    fn no_addr(len: usize) -> Result<Parse, ProxyError> {
        Ok(Parse::Done(Header { len, addrs: None }))
    }

    #[test]
    fn table_of_cases() {
        let tcp4 = b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec();
        let mut tcp4_then_tls = tcp4.clone();
        tcp4_then_tls.extend([0x16, 0x03, 0x01, 0x02, 0x00]);
        let tcp6 = b"PROXY TCP6 2001:db8::1 ::1 65535 0\r\n".to_vec();
        let v2_tcp4 = v2(0x21, 0x11, &v4_body(&[]));
        let mut v2_then_tls = v2_tcp4.clone();
        v2_then_tls.extend([0x16, 0x03, 0x01]);
        let v2_tlv = v2(0x21, 0x11, &v4_body(&[0x04, 0x00, 0x02, b'h', b'2']));
        let v2_tcp6 = v2(0x21, 0x21, &v6_body());
        let v2_local = v2(0x20, 0x00, &[]);
        let v2_local_with_addr = v2(0x20, 0x11, &v4_body(&[]));
        let v2_unix = v2(0x21, 0x31, &[0u8; 216]);
        let long_v1 = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        let cases: Vec<(&str, Vec<u8>, Result<Parse, ProxyError>)> = vec![
            // Starts and partial reads.
            ("empty", vec![], Ok(Parse::Need(12))),
            ("v1 prefix", b"PRO".to_vec(), Ok(Parse::Need(12))),
            ("v2 prefix", b"\r\n\r\n".to_vec(), Ok(Parse::Need(12))),
            ("v1 no CRLF yet", tcp4[..20].to_vec(), Ok(Parse::Need(21))),
            ("v2 first 12", v2_tcp4[..12].to_vec(), Ok(Parse::Need(16))),
            ("v2 first 16", v2_tcp4[..16].to_vec(), Ok(Parse::Need(28))),
            ("v2 body short", v2_tcp4[..20].to_vec(), Ok(Parse::Need(28))),
            // Valid v1.
            (
                "v1 tcp4",
                tcp4.clone(),
                done(tcp4.len(), "192.0.2.1:56324", "198.51.100.2:443"),
            ),
            (
                "v1 tcp4 then TLS",
                tcp4_then_tls,
                done(tcp4.len(), "192.0.2.1:56324", "198.51.100.2:443"),
            ),
            (
                "v1 tcp6",
                tcp6.clone(),
                done(tcp6.len(), "[2001:db8::1]:65535", "[::1]:0"),
            ),
            ("v1 unknown", b"PROXY UNKNOWN\r\n".to_vec(), no_addr(15)),
            (
                "v1 unknown with junk",
                b"PROXY UNKNOWN ffff:f::1 ::1 1 2\r\n".to_vec(),
                no_addr(33),
            ),
            // Invalid v1.
            (
                "v1 bare LF",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n".to_vec(),
                Err(ProxyError::V1("line ends without CRLF")),
            ),
            (
                "v1 udp",
                b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Err(ProxyError::V1("protocol is not TCP4, TCP6 or UNKNOWN")),
            ),
            (
                "v1 v6 addr in tcp4",
                b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec(),
                Err(ProxyError::V1("bad address")),
            ),
            (
                "v1 v4 addr in tcp6",
                b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n".to_vec(),
                Err(ProxyError::V1("bad address")),
            ),
            (
                "v1 port too big",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n".to_vec(),
                Err(ProxyError::V1("bad port")),
            ),
            (
                "v1 port leading zero",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n".to_vec(),
                Err(ProxyError::V1("bad port")),
            ),
            (
                "v1 port sign",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n".to_vec(),
                Err(ProxyError::V1("bad port")),
            ),
            (
                "v1 missing port",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n".to_vec(),
                Err(ProxyError::V1("missing field")),
            ),
            (
                "v1 extra field",
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 81 82\r\n".to_vec(),
                Err(ProxyError::V1("extra fields")),
            ),
            (
                "v1 double space",
                b"PROXY TCP4  1.2.3.4 5.6.7.8 80 81\r\n".to_vec(),
                Err(ProxyError::V1("extra fields")),
            ),
            (
                "v1 too long",
                long_v1,
                Err(ProxyError::V1("no CRLF within 107 bytes")),
            ),
            (
                "v1 lowercase",
                b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                Err(ProxyError::Missing),
            ),
            // Valid v2.
            (
                "v2 tcp4",
                v2_tcp4.clone(),
                done(28, "203.0.113.7:51234", "10.0.0.1:443"),
            ),
            (
                "v2 tcp4 then TLS",
                v2_then_tls,
                done(28, "203.0.113.7:51234", "10.0.0.1:443"),
            ),
            (
                "v2 tcp4 with TLV",
                v2_tlv,
                done(33, "203.0.113.7:51234", "10.0.0.1:443"),
            ),
            (
                "v2 tcp6",
                v2_tcp6,
                done(52, "[2001:db8::1]:40000", "[2001:db8::2]:8443"),
            ),
            ("v2 local", v2_local, no_addr(16)),
            (
                "v2 local ignores addresses",
                v2_local_with_addr,
                no_addr(28),
            ),
            ("v2 unix", v2_unix, no_addr(232)),
            // Invalid v2.
            (
                "v2 version 1",
                v2(0x11, 0x11, &v4_body(&[])),
                Err(ProxyError::V2("version is not 2")),
            ),
            (
                "v2 command 2",
                v2(0x22, 0x11, &v4_body(&[])),
                Err(ProxyError::V2("unknown command")),
            ),
            (
                "v2 udp",
                v2(0x21, 0x12, &v4_body(&[])),
                Err(ProxyError::V2("datagram protocol on a stream")),
            ),
            (
                "v2 family 4",
                v2(0x21, 0x41, &v4_body(&[])),
                Err(ProxyError::V2("unknown address family")),
            ),
            (
                "v2 v4 truncated",
                v2(0x21, 0x11, &[1, 2, 3]),
                Err(ProxyError::V2("IPv4 addresses truncated")),
            ),
            (
                "v2 v6 truncated",
                v2(0x21, 0x21, &v4_body(&[])),
                Err(ProxyError::V2("IPv6 addresses truncated")),
            ),
            (
                "v2 bad signature",
                b"\r\n\r\n\0\r\nQUIX\n\x21\x11\x00\x0c".to_vec(),
                Err(ProxyError::Missing),
            ),
            // Not PROXY at all.
            (
                "TLS ClientHello",
                vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01],
                Err(ProxyError::Missing),
            ),
            (
                "plain HTTP",
                b"GET / HTTP/1.1\r\n".to_vec(),
                Err(ProxyError::Missing),
            ),
        ];
        for (name, input, want) in cases {
            assert_eq!(parse(&input), want, "case {name:?}");
        }
    }

    #[test]
    fn need_never_asks_past_the_header() {
        // Feeding exactly what `parse` asks for reaches Done with every byte consumed.
        let headers = [
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            v2(0x21, 0x11, &v4_body(&[])),
            v2(0x20, 0x00, &[]),
        ];
        for h in headers {
            let mut have = 0;
            loop {
                match parse(&h[..have]).expect("valid") {
                    Parse::Need(n) => {
                        assert!(n <= h.len(), "asked {n} of {}", h.len());
                        assert!(n > have);
                        have = n;
                    }
                    Parse::Done(d) => {
                        assert_eq!(d.len, h.len());
                        assert_eq!(have, h.len());
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn read_header_leaves_the_tls_bytes() {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = std::thread::spawn(move || {
            let mut c = TcpStream::connect(addr).expect("connect");
            // In pieces, as a slow balancer might.
            c.write_all(b"PROXY TCP4 198.51.100.9 127.0.0.1 4444 443")
                .expect("w");
            std::thread::sleep(Duration::from_millis(20));
            c.write_all(b"\r\n\x16\x03\x01").expect("w");
            c
        });
        let (s, _) = listener.accept().expect("accept");
        let h = read_header(&s, Duration::from_secs(5)).expect("header");
        assert_eq!(h.addrs.map(|a| a.0), Some(sa("198.51.100.9:4444")));
        let mut rest = [0u8; 3];
        (&s).read_exact(&mut rest).expect("rest");
        assert_eq!(rest, [0x16, 0x03, 0x01]);
        drop(client.join());

        // Nothing sent: a timeout, not a hang.
        let _silent = TcpStream::connect(addr).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        let start = Instant::now();
        assert_eq!(
            read_header(&s, Duration::from_millis(200)),
            Err(ProxyError::Timeout)
        );
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
