//! A push decoder for `Transfer-Encoding: chunked`: feed it whatever bytes arrived, it
//! consumes what it can and hands back data slices. Used for request bodies (read from the
//! client buffer) and backend responses alike.

/// Longest chunk-size line (with extensions) or trailer line we accept.
const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    BadSize,
    BadLineEnd,
    LineTooLong,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChunkError::BadSize => "bad chunk size",
            ChunkError::BadLineEnd => "chunk not followed by CRLF",
            ChunkError::LineTooLong => "chunk line too long",
        })
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size.
    Size {
        value: u64,
        digits: u32,
    },
    /// After the digits: extensions up to CR.
    Extension,
    SizeLf,
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// Trailer section: `line_len` bytes of the current line seen so far.
    Trailer {
        line_len: usize,
    },
    TrailerLf {
        line_len: usize,
    },
    Done,
}

/// What one call to [`Decoder::step`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Body bytes (borrowed from the input).
    Data(&'a [u8]),
    /// Framing bytes consumed, or nothing consumed: more input is needed.
    Framing,
    /// The last chunk and trailers are complete.
    Done,
}

#[derive(Debug, Clone)]
pub struct Decoder {
    state: State,
    /// Bytes of the current framing line, bounded by MAX_LINE.
    line: usize,
    /// Size read on the current size line, used once its CRLF arrives.
    pending_size: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub fn new() -> Self {
        Self {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            line: 0,
            pending_size: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consume a prefix of `input`. Returns how many bytes were consumed and what they were.
    /// A return of `(0, Step::Framing)` means more input is needed.
    pub fn step<'a>(&mut self, input: &'a [u8]) -> Result<(usize, Step<'a>), ChunkError> {
        if self.state == State::Done {
            return Ok((0, Step::Done));
        }
        if let State::Data { left } = self.state {
            let n = (left.min(input.len() as u64)) as usize;
            let left = left - n as u64;
            self.state = if left == 0 {
                State::DataCr
            } else {
                State::Data { left }
            };
            return Ok((
                n,
                if n == 0 {
                    Step::Framing
                } else {
                    Step::Data(&input[..n])
                },
            ));
        }
        let mut used = 0;
        while used < input.len() {
            let b = input[used];
            used += 1;
            self.state = self.framing_byte(b)?;
            match self.state {
                State::Data { .. } => return Ok((used, Step::Framing)),
                State::Done => return Ok((used, Step::Done)),
                _ => {}
            }
        }
        Ok((used, Step::Framing))
    }

    fn framing_byte(&mut self, b: u8) -> Result<State, ChunkError> {
        self.line += 1;
        if self.line > MAX_LINE {
            return Err(ChunkError::LineTooLong);
        }
        Ok(match self.state {
            State::Size { value, digits } => match hex(b) {
                Some(d) => {
                    // 15 hex digits keep us far below u64 overflow.
                    if digits >= 15 {
                        return Err(ChunkError::BadSize);
                    }
                    State::Size {
                        value: value * 16 + u64::from(d),
                        digits: digits + 1,
                    }
                }
                None if digits == 0 => return Err(ChunkError::BadSize),
                None => {
                    self.pending_size = value;
                    match b {
                        b'\r' => State::SizeLf,
                        b';' | b' ' | b'\t' => State::Extension,
                        _ => return Err(ChunkError::BadSize),
                    }
                }
            },
            State::Extension => match b {
                b'\r' => State::SizeLf,
                b'\n' => return Err(ChunkError::BadLineEnd),
                _ => State::Extension,
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                self.line = 0;
                if self.pending_size == 0 {
                    State::Trailer { line_len: 0 }
                } else {
                    State::Data {
                        left: self.pending_size,
                    }
                }
            }
            State::DataCr => match b {
                b'\r' => State::DataLf,
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::DataLf => match b {
                b'\n' => {
                    self.line = 0;
                    State::Size {
                        value: 0,
                        digits: 0,
                    }
                }
                _ => return Err(ChunkError::BadLineEnd),
            },
            State::Trailer { line_len } => match b {
                b'\r' => State::TrailerLf { line_len },
                b'\n' => return Err(ChunkError::BadLineEnd),
                _ => State::Trailer {
                    line_len: line_len + 1,
                },
            },
            State::TrailerLf { line_len } => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                self.line = 0;
                if line_len == 0 {
                    State::Done
                } else {
                    State::Trailer { line_len: 0 }
                }
            }
            State::Data { .. } | State::Done => self.state,
        })
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode a whole buffer at once: (body, bytes consumed) or None if incomplete. For tests and
/// the fuzz target.
pub fn decode_all(input: &[u8]) -> Result<Option<(Vec<u8>, usize)>, ChunkError> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let (n, step) = d.step(&input[pos..])?;
        pos += n;
        match step {
            Step::Data(data) => out.extend_from_slice(data),
            Step::Done => return Ok(Some((out, pos))),
            Step::Framing if n == 0 => return Ok(None),
            Step::Framing => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (body, used) = decode_all(input).expect("valid").expect("complete");
        assert_eq!(body, b"hello world");
        assert_eq!(&input[used..], b"NEXT");
    }

    #[test]
    fn byte_at_a_time_gives_the_same_body() {
        let input = b"a\r\n0123456789\r\n1\r\nx\r\n0\r\n\r\n";
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for i in 0..input.len() {
            let mut pos = i;
            loop {
                let (n, step) = d.step(&input[pos..i + 1]).expect("valid");
                pos += n;
                match step {
                    Step::Data(x) => out.extend_from_slice(x),
                    Step::Done => break,
                    Step::Framing if n == 0 => break,
                    Step::Framing => {}
                }
            }
        }
        assert!(d.is_done());
        assert_eq!(out, b"0123456789x");
    }

    #[test]
    fn rejects_bad_framing() {
        assert_eq!(decode_all(b"zz\r\n"), Err(ChunkError::BadSize));
        assert_eq!(decode_all(b"5\nhello"), Err(ChunkError::BadSize));
        assert_eq!(decode_all(b"5\r\nhelloX"), Err(ChunkError::BadLineEnd));
        assert_eq!(
            decode_all(b"ffffffffffffffffff\r\n"),
            Err(ChunkError::BadSize)
        );
        assert_eq!(decode_all(b"3\r\nabc\r\n"), Ok(None));
    }
}
