//! Properties checked by the fuzz targets (fuzz/) and by the corpus replay test: the same
//! functions run under libFuzzer and in `cargo test`.

use super::chunked::{self, Decoder, Step};
use super::request::{self, BodyFraming};

/// Find and parse a head; whatever is accepted must be framed without ambiguity.
pub fn request_head(data: &[u8]) {
    let mut scanned = 0;
    let Ok(Some(end)) = request::find_head_end(data, &mut scanned) else {
        return;
    };
    assert!(end <= data.len());
    assert!(data[..end].ends_with(b"\r\n\r\n"));
    let Ok(head) = request::parse(&data[..end]) else {
        return;
    };
    let te = head.header("transfer-encoding").is_some();
    let cl = head.header("content-length").is_some();
    // Never both framings (smuggling), and chunked only when asked for.
    assert!(!(te && cl));
    if head.body == BodyFraming::Chunked {
        assert!(te && head.minor_version == 1);
    }
    // Same answer when the bytes arrive one at a time.
    let mut scanned = 0;
    let mut found = None;
    for cut in 1..=end {
        if let Ok(Some(e)) = request::find_head_end(&data[..cut], &mut scanned) {
            found = Some(e);
            break;
        }
    }
    assert_eq!(found, Some(end));
}

/// Decode at once and in 1..7-byte pieces: same outcome, same body.
pub fn chunked(data: &[u8]) {
    let whole = chunked::decode_all(data);
    let step = data.first().map_or(1, |b| usize::from(b % 7) + 1);
    let pieces = decode_in_pieces(data, step);
    match (&whole, &pieces) {
        (Ok(Some(a)), Ok(Some(b))) => assert_eq!(a, b),
        (Ok(None), Ok(None)) | (Err(_), Err(_)) => {}
        _ => panic!("whole {whole:?} vs pieces {pieces:?}"),
    }
}

type Decoded = Result<Option<(Vec<u8>, usize)>, chunked::ChunkError>;

/// Feed `data` as if it arrived `step` bytes at a time.
fn decode_in_pieces(data: &[u8], step: usize) -> Decoded {
    let mut d = Decoder::new();
    let mut body = Vec::new();
    let (mut pos, mut avail) = (0, 0);
    loop {
        avail = (avail + step).min(data.len());
        loop {
            match d.step(&data[pos..avail])? {
                (n, Step::Data(x)) => {
                    body.extend_from_slice(x);
                    pos += n;
                }
                (n, Step::Done) => return Ok(Some((body, pos + n))),
                (0, Step::Framing) => break,
                (n, Step::Framing) => pos += n,
            }
        }
        if avail == data.len() {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Replay the fuzz corpus (fuzz/corpus/<target>/) through the same properties.
    fn replay(target: &str, check: fn(&[u8])) -> usize {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
        let mut n = 0;
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            check(&data);
            n += 1;
        }
        n
    }

    #[test]
    fn request_head_corpus_replays() {
        assert!(replay("request_head", super::request_head) > 0);
    }

    #[test]
    fn chunked_corpus_replays() {
        assert!(replay("chunked", super::chunked) > 0);
    }
}
