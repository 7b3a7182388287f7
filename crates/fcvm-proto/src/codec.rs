//! Self-synchronising frame codec (docs/design.md §8: the virtio-serial port is not a
//! connection; the format in full: docs/protocol.md §2).
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
    /// The checksum holds but the message does not decode; the stream it names, if any, so
    /// that a reader can end just that stream.
    #[error("Frame does not decode")]
    Decode(#[source] postcard::Error, Option<u32>),
    #[error("Frame does not encode")]
    Encode(#[source] postcard::Error),
}

/// Encodes one frame, delimiter included.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let mut body = postcard::to_stdvec(frame).map_err(CodecError::Encode)?;
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut out = Vec::new();
    crate::cobs_bulk::encode(&body, &mut out);
    if out.len() > MAX_ENCODED {
        return Err(CodecError::Oversize(out.len()));
    }
    out.push(0);
    Ok(out)
}

/// Incremental decoder: feed it bytes as they arrive, take frames out.
///
/// A partial frame is normal (`next_frame` returns `None`); a bad one is reported once and
/// skipped, and decoding goes on with the next frame.
///
/// Linear in its input: frames are decoded in place where they lie in the buffer and only a
/// read offset moves past them; the bytes before it are dropped once they are at least half of
/// the buffer (so each byte is moved at most about once), and no byte is scanned twice for a
/// delimiter.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Where the next frame starts in `buf` (everything before it is consumed).
    start: usize,
    /// Bytes of `buf` up to here are known to hold no delimiter (`start <= scanned`).
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
        self.start = 0;
        self.scanned = 0;
        self.skipping = false;
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() - self.start {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held: a partial frame, or frames fed but not yet taken out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next complete frame, an error for a bad one, or `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Option<Result<Frame, CodecError>> {
        loop {
            let found = memchr::memchr(0, &self.buf[self.scanned..]);
            let Some(end) = found.map(|i| i + self.scanned) else {
                self.scanned = self.buf.len();
                let pending = self.buf.len() - self.start;
                if !self.skipping && pending > MAX_ENCODED {
                    self.skipping = true;
                    self.discard_pending();
                    return Some(Err(CodecError::Oversize(pending)));
                }
                if self.skipping {
                    self.discard_pending();
                }
                return None;
            };
            let begin = self.start;
            self.start = end + 1;
            self.scanned = self.start;
            if self.skipping {
                // The tail of an oversize frame: already reported.
                self.skipping = false;
                continue;
            }
            if end == begin {
                // Consecutive delimiters are harmless padding (used to resync a peer).
                continue;
            }
            return Some(decode_body(&mut self.buf[begin..end]));
        }
    }

    /// Drops every byte held (all of them belong to a frame already reported as oversize).
    fn discard_pending(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
    }
}

/// The stream id at the start of a checksummed body whose message does not decode: the
/// reader can then close just that stream with an error and keep the session.
fn stream_of(body: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(body).ok().map(|(s, _)| s)
}

fn decode_body(raw: &mut [u8]) -> Result<Frame, CodecError> {
    if raw.len() > MAX_ENCODED {
        return Err(CodecError::Oversize(raw.len()));
    }
    let n = crate::cobs_bulk::decode_in_place(raw).map_err(|_| CodecError::Cobs)?;
    if n < 5 {
        return Err(CodecError::Short);
    }
    let (body, crc) = raw[..n].split_at(n - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != crc {
        return Err(CodecError::Checksum);
    }
    postcard::from_bytes(body).map_err(|e| CodecError::Decode(e, stream_of(body)))
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
                random_seed: vec![7; 32],
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
                msg: Msg::Exit {
                    code: -1,
                    run_us: 7,
                },
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
            random_seed: vec![],
        });
        let bytes = encode(&f).unwrap();
        assert_eq!(decode_all(&bytes), vec![Ok(f)]);
        // postcard [stream 0, variant 0, epoch 1, version 1, seed length 0] + crc32 LE,
        // COBS-encoded, 0x00. (Protocol 3 added the seed.)
        assert_eq!(bytes, [1, 1, 3, 1, 1, 5, 107, 172, 251, 222, 0]);
    }

    /// COBS-encodes `body` + its CRC (a frame whose checks pass but whose content may not).
    fn raw_frame(body: &[u8]) -> Vec<u8> {
        let mut b = body.to_vec();
        b.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        let mut out = vec![0u8; cobs::max_encoding_length(b.len()) + 1];
        let n = cobs::encode(&b, &mut out);
        out.truncate(n);
        out.push(0);
        out
    }

    #[test]
    fn each_kind_of_bad_frame_is_reported_once_and_the_next_frame_decodes() {
        let good = encode(&sample()[3]).unwrap();
        let mut bad_crc = encode(&sample()[0]).unwrap();
        bad_crc[3] ^= 0x40;
        let cases: Vec<(Vec<u8>, CodecError)> = vec![
            // a COBS code byte pointing past the end of the frame
            (vec![9, 1, 2, 0], CodecError::Cobs),
            (vec![2, 1, 0], CodecError::Short),
            (bad_crc, CodecError::Checksum),
            // CRC fine, but variant 200 of Msg does not exist
            (
                raw_frame(&[5, 200, 1]),
                CodecError::Decode(postcard::Error::DeserializeUnexpectedEnd, None),
            ),
            // CRC fine, but the payload ends inside a Stdin's 100-byte vector
            (
                raw_frame(&[5, 12, 100, 1, 2]),
                CodecError::Decode(postcard::Error::DeserializeUnexpectedEnd, None),
            ),
        ];
        for (bad, want) in cases {
            let mut bytes = bad.clone();
            bytes.extend_from_slice(&good);
            let out = decode_all(&bytes);
            assert_eq!(out.len(), 2, "{bad:?}: {out:?}");
            match (&out[0], &want) {
                (Err(CodecError::Decode(..)), CodecError::Decode(..)) => {}
                (got, want) => assert_eq!(got.as_ref().err(), Some(want), "{bad:?}"),
            }
            assert_eq!(out[1], Ok(sample()[3].clone()));
        }
    }

    #[test]
    fn oversize_run_fed_in_pieces_is_reported_once() {
        let mut d = Decoder::new();
        let mut errors = 0;
        for _ in 0..10 {
            d.feed(&[0x55; MAX_ENCODED / 3]);
            while let Some(r) = d.next_frame() {
                assert!(matches!(r, Err(CodecError::Oversize(_))), "{r:?}");
                errors += 1;
            }
        }
        assert_eq!(errors, 1, "one report per oversize frame");
        assert!(d.buffered() <= MAX_ENCODED, "skipped bytes are not kept");
        d.feed(&[0]);
        d.feed(&encode(&sample()[0]).unwrap());
        assert_eq!(d.next_frame(), Some(Ok(sample()[0].clone())));
        assert_eq!(d.next_frame(), None);
    }

    #[test]
    fn a_frame_of_exactly_the_limit_passes() {
        // Find the Stdout payload whose encoding is exactly MAX_ENCODED bytes.
        let frame = |n| Frame {
            stream: 1,
            msg: Msg::Stdout(vec![1; n]),
        };
        let n = (MAX_ENCODED - 1000..MAX_ENCODED)
            .find(|&n| encode(&frame(n)).map(|b| b.len()) == Ok(MAX_ENCODED + 1))
            .expect("some size encodes to the limit");
        assert_eq!(decode_all(&encode(&frame(n)).unwrap()), vec![Ok(frame(n))]);
        assert!(encode(&frame(n + 1)).is_err());
    }

    /// Tiny deterministic PRNG (xorshift64*), so the randomized tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// What the fuzz target (`fuzz/fuzz_targets/decode.rs`) checks, on one input: decoding
    /// arbitrary bytes, in arbitrary pieces, never panics; after the garbage, a 0x00 and a
    /// valid frame, that frame is the last thing decoded.
    fn check_resync(garbage: &[u8], cuts: &mut Rng) {
        let good = Frame {
            stream: 42,
            msg: Msg::Stdout(b"after the garbage".to_vec()),
        };
        let mut bytes = garbage.to_vec();
        bytes.push(0);
        bytes.extend(encode(&good).unwrap());
        let mut d = Decoder::new();
        let mut last = None;
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = 1 + cuts.below(rest.len().min(4096));
            d.feed(&rest[..n]);
            rest = &rest[n..];
            while let Some(r) = d.next_frame() {
                last = Some(r);
            }
        }
        assert_eq!(last, Some(Ok(good)), "garbage {garbage:?}");
    }

    #[test]
    fn fuzz_random_and_mutated_inputs_never_panic_and_resync() {
        let mut rng = Rng(0x5eed_f00d_1234_5678);
        let valid: Vec<Vec<u8>> = sample().iter().map(|f| encode(f).unwrap()).collect();
        let runs = if cfg!(debug_assertions) {
            20_000
        } else {
            300_000
        };
        for i in 0..runs {
            let input: Vec<u8> = match i % 3 {
                // plain random bytes, zero-heavy or not
                0 => (0..rng.below(64))
                    .map(|_| {
                        let b = rng.next() as u8;
                        if i % 2 == 0 && b < 32 {
                            0
                        } else {
                            b
                        }
                    })
                    .collect(),
                // a valid frame with a few bytes flipped, dropped or inserted
                _ => {
                    let mut v = valid[rng.below(3) * (i % 2)].clone();
                    for _ in 0..1 + rng.below(4) {
                        let at = rng.below(v.len());
                        match rng.below(3) {
                            0 => v[at] ^= 1 << rng.below(8),
                            1 => {
                                v.remove(at);
                            }
                            _ => v.insert(at, rng.next() as u8),
                        }
                        if v.is_empty() {
                            break;
                        }
                    }
                    v
                }
            };
            check_resync(&input, &mut rng);
        }
        // and a few long ones: oversize runs with and without zeros
        for len in [
            MAX_ENCODED - 1,
            MAX_ENCODED,
            MAX_ENCODED + 1,
            3 * MAX_ENCODED,
        ] {
            let long: Vec<u8> = (0..len).map(|_| (rng.next() as u8) | 1).collect();
            check_resync(&long, &mut rng);
        }
    }

    /// 8 MiB of junk — runs of zeros (empty frames), random bytes without a zero (oversize
    /// runs), random bytes with zeros (short bad frames) — between real frames, fed in pieces
    /// of up to 1 MiB: every real frame comes out, in order, and once the frames are taken
    /// out the decoder holds at most one partial frame. (A decoder that drains its buffer from
    /// the front moves the rest of a piece for every zero: minutes for these zero runs.)
    #[test]
    fn junk_between_real_frames_is_dropped_and_every_frame_decodes() {
        let mut rng = Rng(0xdec0_de00_0bad_f00d);
        let mut real = vec![];
        let mut bytes = vec![];
        let mut junk = 0;
        let mut i = 0u32;
        while junk < 8 << 20 {
            let f = Frame {
                stream: 2 + i,
                msg: Msg::Stdout(vec![i as u8 | 1; rng.below(MAX_CHUNK)]),
            };
            bytes.extend(encode(&f).unwrap());
            real.push(f);
            let n = match i % 3 {
                0 => 1 + rng.below(1 << 20),
                1 => 1 + rng.below(3 * MAX_ENCODED),
                _ => 1 + rng.below(64 * 1024),
            };
            match i % 3 {
                0 => bytes.extend(std::iter::repeat_n(0u8, n)),
                1 => bytes.extend((0..n).map(|_| rng.next() as u8 | 1)),
                _ => bytes.extend((0..n).map(|_| rng.next() as u8)),
            }
            bytes.push(0); // the end of the junk: the next frame starts clean
            junk += n;
            i += 1;
        }
        let mut d = Decoder::new();
        let mut got = vec![];
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (1 + rng.below(1 << 20)).min(rest.len());
            d.feed(&rest[..n]);
            rest = &rest[n..];
            while let Some(r) = d.next_frame() {
                if let Ok(f) = r {
                    got.push(f);
                }
            }
            assert!(d.buffered() <= MAX_ENCODED, "{} bytes held", d.buffered());
        }
        assert_eq!(got.len(), real.len());
        assert!(got == real, "the real frames, in order");
    }

    #[test]
    fn undecodable_message_names_its_stream() {
        // A checksummed body with stream 9 and an unknown message variant.
        let mut body = postcard::to_stdvec(&9u32).unwrap();
        body.push(250);
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let mut enc = vec![0u8; cobs::max_encoding_length(body.len())];
        let n = cobs::encode(&body, &mut enc);
        enc.truncate(n);
        enc.push(0);
        match decode_all(&enc).pop() {
            Some(Err(CodecError::Decode(_, Some(9)))) => {}
            other => panic!("{other:?}"),
        }
    }
}
