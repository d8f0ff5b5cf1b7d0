//! The uwsgi binary protocol's request packet: a 4-byte header (modifier1, u16 LE size,
//! modifier2) then `u16le keylen, key, u16le vallen, val` for each var.

const HEADER: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VarsTooLarge;

/// Builds one packet; its size is checked once, at the end.
pub struct Packet {
    buf: Vec<u8>,
    oversize: bool,
}

impl Default for Packet {
    fn default() -> Self {
        Self::new()
    }
}

impl Packet {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(2048);
        buf.extend_from_slice(&[0; HEADER]);
        Self {
            buf,
            oversize: false,
        }
    }

    pub fn var(&mut self, key: &[u8], value: &[u8]) {
        let (Ok(k), Ok(v)) = (u16::try_from(key.len()), u16::try_from(value.len())) else {
            self.oversize = true;
            return;
        };
        self.buf.extend_from_slice(&k.to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(&v.to_le_bytes());
        self.buf.extend_from_slice(value);
    }

    /// A var whose value is formatted in place (numbers, addresses): no string in between.
    pub fn var_fmt(&mut self, key: &[u8], value: impl std::fmt::Display) {
        struct Bytes<'a>(&'a mut Vec<u8>);
        impl std::fmt::Write for Bytes<'_> {
            fn write_str(&mut self, s: &str) -> std::fmt::Result {
                self.0.extend_from_slice(s.as_bytes());
                Ok(())
            }
        }
        let token = self.begin_var(key);
        let _ = std::fmt::Write::write_fmt(&mut Bytes(&mut self.buf), format_args!("{value}"));
        self.end_var(token);
    }

    /// Start a var whose value is appended in pieces with [`Packet::push`]; returns a token
    /// for [`Packet::end_var`].
    pub fn begin_var(&mut self, key: &[u8]) -> usize {
        match u16::try_from(key.len()) {
            Ok(k) => self.buf.extend_from_slice(&k.to_le_bytes()),
            Err(_) => self.oversize = true,
        }
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.len()
    }

    pub fn push(&mut self, piece: &[u8]) {
        self.buf.extend_from_slice(piece);
    }

    pub fn end_var(&mut self, token: usize) {
        match u16::try_from(self.buf.len() - token) {
            Ok(v) => self.buf[token - 2..token].copy_from_slice(&v.to_le_bytes()),
            Err(_) => self.oversize = true,
        }
    }

    /// The finished packet (modifier1 = 0, modifier2 = 0).
    pub fn finish(mut self) -> Result<Vec<u8>, VarsTooLarge> {
        let size = u16::try_from(self.buf.len() - HEADER).map_err(|_| VarsTooLarge)?;
        if self.oversize {
            return Err(VarsTooLarge);
        }
        self.buf[1..3].copy_from_slice(&size.to_le_bytes());
        Ok(self.buf)
    }
}

/// Read a packet back into vars (for tests and the fuzz corpus).
pub fn decode(packet: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let size = usize::from(u16::from_le_bytes([*packet.get(1)?, *packet.get(2)?]));
    let mut rest = packet.get(HEADER..HEADER + size)?;
    let mut vars = Vec::new();
    let field = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let len = usize::from(u16::from_le_bytes([*rest.first()?, *rest.get(1)?]));
        let v = rest.get(2..2 + len)?.to_vec();
        *rest = &rest[2 + len..];
        Some(v)
    };
    while !rest.is_empty() {
        let k = field(&mut rest)?;
        let v = field(&mut rest)?;
        vars.push((k, v));
    }
    Some(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_round_trips() {
        let mut p = Packet::new();
        p.var(b"REQUEST_METHOD", b"GET");
        let t = p.begin_var(b"HTTP_X");
        p.push(b"a");
        p.push(b", b");
        p.end_var(t);
        let bytes = p.finish().expect("small");
        assert_eq!(bytes[0], 0);
        assert_eq!(bytes[3], 0);
        assert_eq!(
            u16::from_le_bytes([bytes[1], bytes[2]]) as usize,
            bytes.len() - 4
        );
        let vars = decode(&bytes).expect("decodes");
        assert_eq!(
            vars,
            vec![
                (b"REQUEST_METHOD".to_vec(), b"GET".to_vec()),
                (b"HTTP_X".to_vec(), b"a, b".to_vec())
            ]
        );
    }

    #[test]
    fn more_than_64k_is_refused() {
        let mut p = Packet::new();
        p.var(b"A", &vec![b'x'; 40_000]);
        p.var(b"B", &vec![b'x'; 40_000]);
        assert_eq!(p.finish().err(), Some(VarsTooLarge));
        let mut p = Packet::new();
        p.var(b"A", &vec![b'x'; 70_000]);
        assert_eq!(p.finish().err(), Some(VarsTooLarge));
    }
}
