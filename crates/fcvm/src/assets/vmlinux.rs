//! Turns Debian's compressed `bzImage` into the plain ELF `vmlinux` fcvm boots.
//!
//! QEMU's `-M microvm` boots an ELF kernel through its PVH entry point, which halves boot time
//! under TCG (no in-guest decompression), and Firecracker only accepts an ELF. A bzImage carries
//! the ELF as one compressed payload behind the real-mode setup code and decompressor stub, so:
//! 1. look for each compression magic (xz, zstd, gzip) in the file,
//! 2. at each hit, decompress the first bytes; a real payload starts with `\x7fELF`,
//! 3. decompress that payload to the end.
//!
//! False hits (the magic appearing by chance in code) fail at step 2 within a few bytes.

use std::io::{self, Read};

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Codec {
    Xz,
    Zstd,
    Gzip,
}

const MAGICS: [(Codec, &[u8]); 3] = [
    (Codec::Xz, b"\xfd7zXZ\x00"),
    (Codec::Zstd, b"\x28\xb5\x2f\xfd"),
    (Codec::Gzip, b"\x1f\x8b\x08"),
];

/// A decoder over `data` that stops at the end of the first stream/frame/member: the kernel
/// build appends the uncompressed size after the payload, which must not be read as data.
fn decoder(codec: Codec, data: &[u8]) -> io::Result<Box<dyn Read + '_>> {
    Ok(match codec {
        Codec::Xz => Box::new(XzFirstStream {
            s: xz2::stream::Stream::new_stream_decoder(u64::MAX, 0).map_err(io::Error::other)?,
            input: data,
            done: false,
        }),
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(data)?.single_frame()),
        Codec::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
    })
}

/// xz2's own reader treats bytes after the stream as corruption, so drive the stream by hand
/// and report end of file at the end of the first stream.
struct XzFirstStream<'a> {
    s: xz2::stream::Stream,
    input: &'a [u8],
    done: bool,
}

impl Read for XzFirstStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.done && !buf.is_empty() {
            let (in0, out0) = (self.s.total_in(), self.s.total_out());
            let status = self
                .s
                .process(self.input, buf, xz2::stream::Action::Run)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let consumed = (self.s.total_in() - in0) as usize;
            let produced = (self.s.total_out() - out0) as usize;
            self.input = &self.input[consumed..];
            self.done = status == xz2::stream::Status::StreamEnd;
            if produced > 0 {
                return Ok(produced);
            }
            if consumed == 0 && !self.done {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(0)
    }
}

/// Tries one candidate offset: `Ok(None)` when it is not an ELF payload.
fn try_payload(codec: Codec, data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut r = decoder(codec, data)?;
    let mut head = [0u8; 4];
    if r.read_exact(&mut head).is_err() || &head != ELF_MAGIC {
        return Ok(None);
    }
    let mut out = head.to_vec();
    // A real payload that then fails to decode is corrupt, not a false hit: report it.
    r.read_to_end(&mut out)?;
    Ok(Some(out))
}

/// Returns the ELF kernel inside a bzImage, or `None` when no payload decompresses to an ELF.
pub(super) fn extract(bzimage: &[u8]) -> io::Result<Option<Vec<u8>>> {
    for (codec, magic) in MAGICS {
        let mut from = 0;
        while let Some(i) = find(&bzimage[from..], magic) {
            let off = from + i;
            if let Some(elf) = try_payload(codec, &bzimage[off..])? {
                tracing::debug!(?codec, off, len = elf.len(), "vmlinux payload found");
                return Ok(Some(elf));
            }
            from = off + 1;
        }
    }
    Ok(None)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn fake_elf() -> Vec<u8> {
        let mut v = ELF_MAGIC.to_vec();
        v.extend((0..100_000u32).map(|i| (i * 7 % 251) as u8));
        v
    }

    /// setup code + a false magic hit + the payload + the 4-byte size the kernel build appends.
    fn bzimage(codec: Codec, payload: &[u8]) -> Vec<u8> {
        let compressed = match codec {
            Codec::Xz => {
                let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
                e.write_all(payload).unwrap();
                e.finish().unwrap()
            }
            Codec::Zstd => zstd::encode_all(payload, 3).unwrap(),
            Codec::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), Default::default());
                e.write_all(payload).unwrap();
                e.finish().unwrap()
            }
        };
        let magic = MAGICS.iter().find(|(c, _)| *c == codec).unwrap().1;
        let mut img = vec![0x90u8; 4096];
        img.extend_from_slice(magic);
        img.extend_from_slice(b"garbage that is not a stream");
        img.extend_from_slice(&compressed);
        img.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        img
    }

    #[test]
    fn finds_payload_for_each_codec() {
        let elf = fake_elf();
        for codec in [Codec::Xz, Codec::Zstd, Codec::Gzip] {
            let got = extract(&bzimage(codec, &elf)).unwrap();
            assert_eq!(got.as_deref(), Some(&elf[..]), "{codec:?}");
        }
    }

    #[test]
    fn skips_payload_that_is_not_elf() {
        let not_elf = b"MZ not a kernel".repeat(100);
        assert_eq!(extract(&bzimage(Codec::Xz, &not_elf)).unwrap(), None);
        assert_eq!(extract(b"no magic here").unwrap(), None);
    }
}
