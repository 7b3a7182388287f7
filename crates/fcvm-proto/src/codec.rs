//! Self-synchronising frame codec (DESIGN §4: the virtio-serial port is not a connection).
//!
//! ```text
//! +---------------------------------------------------------------+------+
//! | COBS( postcard(Frame) || crc32(postcard(Frame)) as u32 LE )   | 0x00 |
//! +---------------------------------------------------------------+------+
//! ```
//!
//! COBS removes every zero byte from the body, so 0x00 only ever ends a frame: a reader that
//! starts in the middle of a frame (a restored guest holding half of an old host's frame, or a
//! host that connects mid-stream) drops bytes up to the next 0x00 and is in sync again. The
//! CRC catches torn or mixed frames; they are dropped whole and reported, never half-applied.

use crate::Frame;

/// Largest encoded frame (without the delimiter). Larger ones are dropped as `Oversize`.
pub const MAX_ENCODED: usize = 128 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("Frame of {0} bytes exceeds the limit")]
    Oversize(usize),
    #[error("Frame is not valid COBS")]
    Cobs,
    #[error("Frame checksum mismatch")]
    Checksum,
    #[error("Frame too short")]
    Short,
    #[error("Frame does not decode: {0}")]
    Decode(String),
    #[error("Frame does not encode: {0}")]
    Encode(String),
}

/// Encodes one frame, delimiter included.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let mut body = postcard::to_stdvec(frame).map_err(|e| CodecError::Encode(e.to_string()))?;
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut out = vec![0u8; cobs::max_encoding_length(body.len()) + 1];
    let n = cobs::encode(&body, &mut out);
    if n > MAX_ENCODED {
        return Err(CodecError::Oversize(n));
    }
    out.truncate(n);
    out.push(0);
    Ok(out)
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
///
/// A partial frame is normal (`next_frame` returns `None`); a bad one is reported once and
/// skipped, and decoding goes on with the next frame.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already known to hold no delimiter (keeps feeding linear).
    scanned: usize,
    /// Set while discarding an over-long run of bytes up to its next delimiter.
    skipping: bool,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets any partial frame (a new connection starts clean).
    pub fn reset(&mut self) {
        self.buf.clear();
        self.scanned = 0;
        self.skipping = false;
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Returns the next complete frame, an error for a bad one, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CodecError>> {
        loop {
            let found = self.buf[self.scanned..].iter().position(|&b| b == 0);
            let Some(end) = found.map(|i| i + self.scanned) else {
                self.scanned = self.buf.len();
                if !self.skipping && self.buf.len() > MAX_ENCODED {
                    let n = self.buf.len();
                    self.buf.clear();
                    self.scanned = 0;
                    self.skipping = true;
                    return Some(Err(CodecError::Oversize(n)));
                }
                if self.skipping {
                    self.buf.clear();
                    self.scanned = 0;
                }
                return None;
            };
            let mut raw: Vec<u8> = self.buf.drain(..=end).collect();
            raw.pop();
            self.scanned = 0;
            if self.skipping {
                // The tail of an oversize frame: already reported.
                self.skipping = false;
                continue;
            }
            if raw.is_empty() {
                // Consecutive delimiters are harmless padding (used to resync a peer).
                continue;
            }
            return Some(decode_body(&mut raw));
        }
    }
}

fn decode_body(raw: &mut [u8]) -> Result<Frame, CodecError> {
    if raw.len() > MAX_ENCODED {
        return Err(CodecError::Oversize(raw.len()));
    }
    let n = cobs::decode_in_place(raw).map_err(|_| CodecError::Cobs)?;
    if n < 5 {
        return Err(CodecError::Short);
    }
    let (body, crc) = raw[..n].split_at(n - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(CodecError::Checksum);
    }
    postcard::from_bytes(body).map_err(|e| CodecError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn sample() -> Vec<Frame> {
        vec![
            Frame::control(Msg::Hello {
                epoch: 7,
                version: PROTOCOL_VERSION,
            }),
            Frame {
                stream: 3,
                msg: Msg::Stdout((0..=255u8).cycle().take(70_000).collect()),
            },
            Frame {
                stream: 9,
                msg: Msg::Start {
                    spec: ProcessSpec {
                        args: vec!["sh".into(), "-c".into(), "echo \0hi".into()],
                        env: vec!["A=B".into()],
                        tty: true,
                        rows: 24,
                        cols: 80,
                        ..Default::default()
                    },
                    target: Target::ContainerExec,
                },
            },
            Frame {
                stream: 1,
                msg: Msg::Exit { code: -1 },
            },
        ]
    }

    fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, CodecError>> {
        let mut d = Decoder::new();
        d.feed(bytes);
        std::iter::from_fn(|| d.next_frame()).collect()
    }

    #[test]
    fn round_trip() {
        for f in sample() {
            let bytes = encode(&f).unwrap();
            assert_eq!(bytes.iter().filter(|&&b| b == 0).count(), 1);
            assert_eq!(decode_all(&bytes), vec![Ok(f)]);
        }
    }

    #[test]
    fn byte_by_byte_feed() {
        let frames = sample();
        let bytes: Vec<u8> = frames.iter().flat_map(|f| encode(f).unwrap()).collect();
        let mut d = Decoder::new();
        let mut got = vec![];
        for b in bytes {
            d.feed(&[b]);
            while let Some(f) = d.next_frame() {
                got.push(f.unwrap());
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn resyncs_after_garbage_and_torn_frame() {
        let a = encode(&sample()[0]).unwrap();
        let b = encode(&sample()[3]).unwrap();
        let mut bytes = vec![];
        bytes.extend_from_slice(&a[a.len() / 2..]); // second half of an old frame
        bytes.extend_from_slice(&b);
        let out = decode_all(&bytes);
        assert_eq!(out.len(), 2);
        assert!(out[0].is_err());
        assert_eq!(out[1], Ok(sample()[3].clone()));
    }

    #[test]
    fn corrupted_byte_is_caught_by_crc() {
        let mut a = encode(&sample()[2]).unwrap();
        let i = a.len() / 2;
        a[i] = if a[i] == 1 { 2 } else { 1 };
        let out = decode_all(&a);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_err());
    }

    #[test]
    fn oversize_is_dropped_and_stream_continues() {
        let mut bytes = vec![7u8; MAX_ENCODED + 10];
        bytes.push(0);
        let good = encode(&sample()[0]).unwrap();
        let mut d = Decoder::new();
        d.feed(&bytes[..MAX_ENCODED + 5]);
        assert_eq!(
            d.next_frame(),
            Some(Err(CodecError::Oversize(MAX_ENCODED + 5)))
        );
        d.feed(&bytes[MAX_ENCODED + 5..]);
        d.feed(&good);
        assert_eq!(d.next_frame(), Some(Ok(sample()[0].clone())));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn encode_refuses_oversize() {
        let f = Frame {
            stream: 1,
            msg: Msg::Stdout(vec![1; MAX_ENCODED + 1]),
        };
        assert!(matches!(encode(&f), Err(CodecError::Oversize(_))));
    }

    #[test]
    fn byte_fixture_is_stable() {
        // Wire compatibility: a Hello for epoch 1 must encode to exactly these bytes.
        let f = Frame::control(Msg::Hello {
            epoch: 1,
            version: 1,
        });
        let bytes = encode(&f).unwrap();
        assert_eq!(decode_all(&bytes), vec![Ok(f)]);
        // postcard [stream 0, variant 0, epoch 1, version 1] + crc32 LE, COBS-encoded, 0x00.
        assert_eq!(bytes, [1, 1, 7, 1, 1, 203, 222, 88, 79, 0]);
    }
}
