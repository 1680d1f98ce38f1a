//! Finds where a chunked message body ends, without decoding it: the fast path relays
//! the backend's chunked bytes as they are and only needs to know when the response is
//! over (so the backend connection can serve the next request); and the framing watch
//! in front of hyper follows chunked request bodies with it, to find the next request
//! head where hyper will. One grammar, RFC 9112 7.1 as hyper reads it, for both.

use super::policy::MAX_CHUNK_EXTENSIONS;

/// Where the scanner is in a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In a chunk-size line: the size so far and its digit count.
    Size { size: u64, digits: u8 },
    /// After the size, spaces or tabs before a `;` or the line's end.
    SizeLws { size: u64 },
    /// After the size, in chunk extensions, until the line ends.
    Extension { size: u64 },
    /// The size line's CR was seen; its LF must follow.
    SizeLf { size: u64 },
    /// Inside chunk data: bytes left.
    Data(u64),
    /// After chunk data: its CR.
    DataCr,
    /// After chunk data: its LF.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// The final empty line's CR was seen.
    EndLf,
    /// The body is over.
    Done,
}

/// A chunked body that does not follow RFC 9112 (or has more than
/// [`MAX_CHUNK_EXTENSIONS`] bytes of extensions): the bytes of the last feed before
/// the one refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed {
    /// The refused byte's offset in the last feed.
    pub at: usize,
}

/// Where [`ChunkedEnd::decode`] found content in the bytes it was fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Chunk data.
    Data(std::ops::Range<usize>),
    /// Bytes of a trailer field line (a line fed in two pieces comes as two).
    Trailer(std::ops::Range<usize>),
}

/// Follows a chunked body fed in pieces of any size.
#[derive(Debug, Clone)]
pub struct ChunkedEnd {
    state: State,
    /// Bytes of chunk extensions so far.
    extensions: u64,
}

impl Default for ChunkedEnd {
    fn default() -> Self {
        ChunkedEnd {
            state: State::Size { size: 0, digits: 0 },
            extensions: 0,
        }
    }
}

impl ChunkedEnd {
    /// Reads the next bytes of the body; `Some(n)` when the body ends after the first
    /// `n` of them (the rest is not part of it).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, Malformed> {
        self.decode(bytes, |_| {})
    }

    /// As [`ChunkedEnd::feed`], telling `piece` where in `bytes` the chunks' data and the
    /// trailer lines are (a decoder's view of the same grammar).
    pub fn decode(
        &mut self,
        bytes: &[u8],
        mut piece: impl FnMut(Piece),
    ) -> Result<Option<usize>, Malformed> {
        let mut i = 0;
        let mut trailer_from = None;
        while i < bytes.len() {
            if let State::Data(left) = self.state {
                let take = left.min((bytes.len() - i) as u64);
                piece(Piece::Data(i..i + take as usize));
                i += take as usize;
                self.state = if take == left {
                    State::DataCr
                } else {
                    State::Data(left - take)
                };
                continue;
            }
            let b = bytes[i];
            i += 1;
            let malformed = Err(Malformed { at: i - 1 });
            self.state = match self.state {
                State::Size { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if digits >= 15 {
                            return malformed;
                        }
                        let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                        State::Size {
                            size: size * 16 + digit,
                            digits: digits + 1,
                        }
                    }
                    b';' if digits > 0 => State::Extension { size },
                    b' ' | b'\t' if digits > 0 => State::SizeLws { size },
                    b'\r' if digits > 0 => State::SizeLf { size },
                    _ => return malformed,
                },
                State::SizeLws { size } => match b {
                    b' ' | b'\t' => State::SizeLws { size },
                    b';' => State::Extension { size },
                    b'\r' => State::SizeLf { size },
                    _ => return malformed,
                },
                State::Extension { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return malformed,
                    _ => {
                        self.extensions += 1;
                        if self.extensions > MAX_CHUNK_EXTENSIONS {
                            return malformed;
                        }
                        State::Extension { size }
                    }
                },
                State::SizeLf { size } => match b {
                    b'\n' if size == 0 => State::TrailerStart,
                    b'\n' => State::Data(size),
                    _ => return malformed,
                },
                State::DataCr => match b {
                    b'\r' => State::DataLf,
                    _ => return malformed,
                },
                State::DataLf => match b {
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return malformed,
                },
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return malformed,
                    _ => {
                        trailer_from = Some(i - 1);
                        State::Trailer
                    }
                },
                State::Trailer => match b {
                    b'\n' => {
                        piece(Piece::Trailer(trailer_from.take().unwrap_or(0)..i));
                        State::TrailerStart
                    }
                    _ => State::Trailer,
                },
                State::EndLf => match b {
                    b'\n' => {
                        self.state = State::Done;
                        return Ok(Some(i));
                    }
                    _ => return malformed,
                },
                State::Data(_) => unreachable!("handled above"),
                State::Done => return Ok(Some(i - 1)),
            };
        }
        if self.state == State::Trailer {
            piece(Piece::Trailer(trailer_from.unwrap_or(0)..bytes.len()));
        }
        Ok(if self.state == State::Done {
            Some(0)
        } else {
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn end_of(pieces: &[&[u8]]) -> Result<Option<usize>, Malformed> {
        let mut scanner = ChunkedEnd::default();
        let mut offset = 0;
        for piece in pieces {
            if let Some(n) = scanner.feed(piece)? {
                return Ok(Some(offset + n));
            }
            offset += piece.len();
        }
        Ok(None)
    }

    #[test]
    fn finds_the_end_with_extensions_and_trailers() {
        let body = b"5;name=value\r\nhello\r\n0\r\nExpires: never\r\n\r\nGET / HTTP/1.1";
        assert_eq!(end_of(&[body]), Ok(Some(body.len() - 14)));
        assert_eq!(end_of(&[b"0\r\n\r\n"]), Ok(Some(5)));
        assert_eq!(end_of(&[b"A\r\n0123456789\r\n0\r\n"]), Ok(None));
    }

    #[test]
    fn decodes_data_and_trailers_fed_in_any_pieces() {
        let body = b"5;x=y\r\nhello\r\nB\r\n, the world\r\n0\r\nA: 1\r\nB: 2\r\n\r\nnext";
        for cut in 0..body.len() {
            let mut scanner = ChunkedEnd::default();
            let (mut data, mut trailers) = (Vec::new(), Vec::new());
            let mut end = None;
            for (offset, part) in [(0, &body[..cut]), (cut, &body[cut..])] {
                let found = scanner
                    .decode(part, |p| match p {
                        Piece::Data(r) => data.extend_from_slice(&part[r]),
                        Piece::Trailer(r) => trailers.extend_from_slice(&part[r]),
                    })
                    .unwrap();
                if let Some(n) = found {
                    end = Some(offset + n);
                    break;
                }
            }
            assert_eq!(data, b"hello, the world", "cut at {cut}");
            assert_eq!(trailers, b"A: 1\r\nB: 2\r\n", "cut at {cut}");
            assert_eq!(end, Some(body.len() - 4), "cut at {cut}");
        }
    }

    #[test]
    fn refuses_what_is_not_chunked() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXY",
            b"5\nhello\r\n",
            b"1000000000000000\r\n",
            b"0\r\n\n",
            b"0x5\r\nhello\r\n",
            b"+5\r\nhello\r\n",
            b"5 x\r\nhello\r\n",
        ] {
            assert!(
                end_of(&[bad]).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn the_largest_sizes_do_not_overflow() {
        // Issue 16: the old watch computed `size + 2` for the CRLF after the data, which
        // overflows for a size of 2^64 - 1; sizes past 15 hex digits are refused at the
        // 16th digit, before any arithmetic could overflow.
        for size in ["ffffffffffffffff", "FFFFFFFFFFFFFFFF", "10000000000000000"] {
            let line = format!("{size}\r\n");
            assert_eq!(
                end_of(&[line.as_bytes()]),
                Err(Malformed { at: 15 }),
                "{size}"
            );
        }
        // 15 digits is the most: a body that long is followed, not refused.
        assert_eq!(end_of(&[b"fffffffffffffff\r\nabc"]), Ok(None));
    }

    #[test]
    fn extensions_are_bounded_and_the_refused_byte_is_named() {
        let long = format!("1;{}\r\nx\r\n0\r\n\r\n", "a".repeat(4000));
        assert_eq!(end_of(&[long.as_bytes()]), Ok(Some(long.len())));
        let longer = format!("1;{}\r\nx\r\n", "a".repeat(4097));
        assert_eq!(end_of(&[longer.as_bytes()]), Err(Malformed { at: 4098 }));
        // The limit is per body, not per line.
        let many = "1;".to_string() + &"a".repeat(3000) + "\r\nx\r\n1;" + &"a".repeat(3000);
        assert!(end_of(&[many.as_bytes()]).is_err());
        assert_eq!(end_of(&[b"5\r\nhelloXY"]), Err(Malformed { at: 8 }));
        assert_eq!(end_of(&[b"5 ;x\r\nhello\r\n0\r\n\r\n"]), Ok(Some(18)));
    }

    fn encode(chunks: &[Vec<u8>], trailers: &[String]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, c) in chunks.iter().filter(|c| !c.is_empty()).enumerate() {
            if i % 2 == 0 {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            } else {
                out.extend_from_slice(format!("{:X};ext=\"a b\"\r\n", c.len()).as_bytes());
            }
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n");
        for t in trailers {
            out.extend_from_slice(format!("X-{t}: {t}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    proptest! {
        /// However the body is cut into reads, the end is found exactly where it is.
        #[test]
        fn the_end_is_found_across_any_split(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..8),
            trailers in prop::collection::vec("[a-z]{1,8}", 0..3),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
            after in prop::collection::vec(any::<u8>(), 0..20),
        ) {
            let body = encode(&chunks, &trailers);
            let mut wire = body.clone();
            wire.extend_from_slice(&after);
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            at.push(0);
            at.push(wire.len());
            at.sort_unstable();
            let pieces: Vec<&[u8]> = at.windows(2).map(|w| &wire[w[0]..w[1]]).collect();
            prop_assert_eq!(end_of(&pieces), Ok(Some(body.len())));
            // Cut short, the body is not over.
            prop_assert_eq!(end_of(&[&body[..body.len() - 1]]), Ok(None));
        }
    }
}
