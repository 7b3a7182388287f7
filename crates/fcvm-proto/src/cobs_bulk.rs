//! COBS (the frame codec's byte stuffing, [`crate::codec`]) a block at a time.
//!
//! The same bytes as the `cobs` crate's encoder and decoder (a run of 254 non-zero bytes is
//! an `0xFF` block, and the body always ends with a block of its own), but each block is
//! found with `memchr` and moved with one copy, and runs of zeros are handled eight bytes at
//! a time, instead of a loop per byte. In the guest's emulated CPU (TCG) the per-byte loops
//! were most of the cost of a map request's 64 KiB (docs/design.md §20).

/// Eight `0x01` codes: eight zeros of the decoded body.
const ONES: u64 = u64::from_ne_bytes([1; 8]);

/// Appends the COBS encoding of `body` (no delimiter) to `out`.
pub fn encode(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 254 + 2);
    let mut rest = body;
    loop {
        let (chunk, after) = match memchr::memchr(0, rest) {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let mut c = chunk;
        while c.len() >= 254 {
            out.push(0xFF);
            out.extend_from_slice(&c[..254]);
            c = &c[254..];
        }
        out.push(c.len() as u8 + 1);
        out.extend_from_slice(c);
        let Some(after) = after else {
            return;
        };
        // Each further zero of a run ends an empty chunk: one `0x01` code.
        let zeros = leading_zeros(after);
        out.resize(out.len() + zeros, 1);
        rest = &after[zeros..];
    }
}

/// Decodes `buf` (one encoded body without delimiter, so holding no zero byte) in place;
/// returns the decoded length, or `Err` for a block running past the end or a zero byte.
pub fn decode_in_place(buf: &mut [u8]) -> Result<usize, ()> {
    let n = buf.len();
    let (mut src, mut dst) = (0, 0);
    while src < n {
        let code = buf[src] as usize;
        if code == 0 || src + code > n {
            return Err(());
        }
        if code == 1 {
            // A run of empty blocks: one zero each, but none for a last block.
            let run = leading(&buf[src..], 1, ONES);
            let zeros = if src + run == n { run - 1 } else { run };
            buf[dst..dst + zeros].fill(0);
            dst += zeros;
            src += run;
            continue;
        }
        buf.copy_within(src + 1..src + code, dst);
        dst += code - 1;
        src += code;
        if code != 0xFF && src < n {
            buf[dst] = 0;
            dst += 1;
        }
    }
    Ok(dst)
}

fn leading_zeros(b: &[u8]) -> usize {
    leading(b, 0, 0)
}

/// How many bytes `b` starts with equal to `byte` (`word`: eight of them), a word at a time.
fn leading(b: &[u8], byte: u8, word: u64) -> usize {
    let mut i = 0;
    while let Some(w) = b.get(i..i + 8) {
        if u64::from_ne_bytes(w.try_into().expect("8 bytes")) != word {
            break;
        }
        i += 8;
    }
    i + b[i..].iter().take_while(|&&x| x == byte).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As the codec called it before: with one byte to spare, where a body ending in a
    /// full 254-byte block gets its final `0x01` block (the crate writes it past its own
    /// `max_encoding_length`).
    fn crate_encode(body: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; cobs::max_encoding_length(body.len()) + 1];
        let n = cobs::encode(body, &mut out);
        out.truncate(n);
        out
    }

    /// Bodies with every kind of block: none, short, exactly 253/254/255 long, runs of
    /// zeros of every length mod 8, at the start, middle and end.
    fn bodies() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![];
        for len in [1, 2, 7, 8, 9, 16, 253, 254, 255, 508, 509, 1000] {
            v.push(vec![0; len]);
            v.push(vec![7; len]);
            v.push((0..len).map(|i| (i % 256) as u8).collect());
            v.push(
                (0..len)
                    .map(|i| if i % 254 == 253 { 0 } else { 1 })
                    .collect(),
            );
        }
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..400 {
            let len = 1 + (i * 37) % 3000;
            let density = 1 + i % 40;
            v.push(
                (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        if seed.is_multiple_of(density as u64) {
                            0
                        } else {
                            (seed >> 8) as u8 | 1
                        }
                    })
                    .collect(),
            );
        }
        v
    }

    #[test]
    fn encodes_as_the_cobs_crate_and_decodes_back() {
        for body in bodies() {
            let mut mine = vec![];
            encode(&body, &mut mine);
            assert_eq!(mine, crate_encode(&body), "encoding of {body:?}");
            assert!(!mine.contains(&0));
            let n = decode_in_place(&mut mine).unwrap();
            assert_eq!(mine[..n], body[..]);
        }
    }

    #[test]
    fn decodes_as_the_cobs_crate() {
        for body in bodies() {
            let enc = crate_encode(&body);
            let mut theirs = enc.clone();
            let n = cobs::decode_in_place(&mut theirs).unwrap();
            let mut mine = enc;
            assert_eq!(decode_in_place(&mut mine), Ok(n));
            assert_eq!(mine[..n], theirs[..n]);
        }
    }

    /// A body ending in a full block without the final `0x01` (valid COBS too) decodes.
    #[test]
    fn a_last_full_block_may_end_the_body() {
        let mut enc = [&[0xFF][..], &[7; 254]].concat();
        assert_eq!(decode_in_place(&mut enc), Ok(254));
        assert_eq!(enc[..254], [7; 254]);
    }

    #[test]
    fn bad_blocks_are_errors() {
        assert_eq!(
            decode_in_place(&mut [5, 1, 2]),
            Err(()),
            "runs past the end"
        );
        assert_eq!(decode_in_place(&mut [2, 1, 0, 1]), Err(()), "a zero byte");
        assert_eq!(decode_in_place(&mut []), Ok(0));
    }
}
