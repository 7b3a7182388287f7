//! How much one image may unpack, and the counting that enforces it.
//!
//! A layer is compressed, so its size says nothing of what it unpacks to (a 2 MB gzip layer
//! holding a 2 GiB file of zeros would fill the data dir). [`UnpackLimit`] bounds, per image:
//! - the bytes of all entries of all its layers: an entry's logical size (a sparse file's full
//!   size, since `mkfs.erofs` reads it all) and its tar headers are charged *before* it is
//!   written, so an entry that would pass the limit never touches the disk; bytes a layer's
//!   stream carries after its tar end marker (hashed for the diff_id, never written) are charged
//!   too;
//! - the number of entries (every tar entry, whiteouts and links included).
//!
//! Counting is cumulative across layers (an entry a later layer overwrites still counted), so it
//! also bounds the work done and the disk written at any moment. An archive source
//! (oci-archive, docker-archive) is extracted under its own budget of the same limit.
//!
//! Separately, [`Guarded`] bounds what the tar reader buffers in memory between two entries (PAX
//! headers, GNU long names, sparse maps: the tar crate reads each whole into a `Vec`).
//!
//! Defaults: 16 GiB and 1,000,000 entries — far above real images (a full TeX Live image is
//! ~5 GiB and ~200,000 files). Set with `fcvm podman run --unpack-limit SIZE[,ENTRIES]` or
//! `FCVM_UNPACK_LIMIT`. Hook for a sized rootfs: when VMs get a writable root of a fixed size,
//! pass it through [`UnpackLimit::capped_to`] so an image never unpacks to more than fits.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;
use std::str::FromStr;

/// The environment variable read when `--unpack-limit` is not given.
pub const UNPACK_LIMIT_ENV: &str = "FCVM_UNPACK_LIMIT";

/// Most metadata the tar reader may buffer between two entries.
pub(crate) const META_MAX: u64 = 4 << 20;

/// Most an image may unpack: bytes and entries, over all its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimit {
    pub bytes: u64,
    pub entries: u64,
}

impl UnpackLimit {
    pub const DEFAULT_BYTES: u64 = 16 << 30;
    pub const DEFAULT_ENTRIES: u64 = 1_000_000;

    /// `FCVM_UNPACK_LIMIT` if set, else `None`.
    pub fn from_env() -> Result<Option<Self>, ParseLimitError> {
        match std::env::var(UNPACK_LIMIT_ENV) {
            Ok(v) => v.parse().map(Some),
            Err(_) => Ok(None),
        }
    }

    /// This limit, lowered to a root filesystem of `rootfs_bytes` (the hook for sized roots).
    pub fn capped_to(self, rootfs_bytes: u64) -> Self {
        Self {
            bytes: self.bytes.min(rootfs_bytes),
            ..self
        }
    }
}

impl Default for UnpackLimit {
    fn default() -> Self {
        Self {
            bytes: Self::DEFAULT_BYTES,
            entries: Self::DEFAULT_ENTRIES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("Invalid unpack limit {0:?}: expected SIZE[,ENTRIES], e.g. 512M, 8G or 8G,2000000")]
pub struct ParseLimitError(String);

/// `SIZE[,ENTRIES]`: SIZE in bytes with an optional binary suffix K, M, G, T (`KiB`, `MB`… too).
impl FromStr for UnpackLimit {
    type Err = ParseLimitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseLimitError(s.to_string());
        let (size, entries) = match s.trim().split_once(',') {
            Some((a, b)) => (a, Some(b)),
            None => (s.trim(), None),
        };
        let bytes = crate::util::parse_size(size)
            .filter(|b| *b > 0)
            .ok_or_else(bad)?;
        let entries = match entries {
            Some(e) => e.trim().parse().ok().filter(|e| *e > 0).ok_or_else(bad)?,
            None => Self::DEFAULT_ENTRIES,
        };
        Ok(Self { bytes, entries })
    }
}

/// Bytes for people: `512 MiB`, `16 GiB`, `1000 bytes`.
pub(crate) fn human(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// Which count ran over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exceeded {
    Bytes(u64),
    Entries(u64),
}

impl Exceeded {
    /// What ran over, for [`super::ImageError::UnpackLimit`].
    pub(crate) fn describe(self) -> String {
        match self {
            Exceeded::Bytes(b) => format!("more than {} unpacked", human(b)),
            Exceeded::Entries(n) => format!("more than {n} entries"),
        }
    }
}

/// What one image (or one archive) has unpacked so far, against its limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: UnpackLimit,
    bytes: u64,
    entries: u64,
}

impl Budget {
    pub(crate) fn new(limit: UnpackLimit) -> Self {
        Self {
            limit,
            bytes: 0,
            entries: 0,
        }
    }

    /// Charges one entry of `size` bytes, before it is written.
    pub(crate) fn entry(&mut self, size: u64) -> Result<(), Exceeded> {
        self.entries += 1;
        if self.entries > self.limit.entries {
            return Err(Exceeded::Entries(self.limit.entries));
        }
        self.bytes(size)
    }

    /// Charges `n` bytes that are not an entry of their own.
    pub(crate) fn bytes(&mut self, n: u64) -> Result<(), Exceeded> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.limit.bytes {
            return Err(Exceeded::Bytes(self.limit.bytes));
        }
        Ok(())
    }

    /// Bytes that may still be charged.
    pub(crate) fn bytes_left(&self) -> u64 {
        self.limit.bytes.saturating_sub(self.bytes)
    }
}

/// A reader that refuses more than [`META_MAX`] bytes while its [`Meter`] says the tar reader is
/// between entries (reading headers and their extensions), and is unbounded while an entry's
/// data (already charged to a [`Budget`]) is read.
pub(crate) struct Guarded<R> {
    inner: R,
    left: Rc<Cell<Option<u64>>>,
}

/// The switch of a [`Guarded`] reader, kept by the loop that walks the entries.
#[derive(Clone)]
pub(crate) struct Meter(Rc<Cell<Option<u64>>>);

impl Meter {
    /// Before asking the tar reader for its next entry.
    pub(crate) fn between_entries(&self) {
        self.0.set(Some(META_MAX));
    }

    /// While an entry's data is read; returns the header bytes read since
    /// [`Meter::between_entries`] (charged to the budget too).
    pub(crate) fn in_entry(&self) -> u64 {
        let used = self.0.get().map_or(0, |left| META_MAX - left);
        self.0.set(None);
        used
    }
}

/// The error a [`Guarded`] reader returns: recognised by [`is_meta_overflow`].
#[derive(Debug, thiserror::Error)]
#[error("tar headers larger than {} between two entries", human(META_MAX))]
pub(crate) struct MetaOverflow;

/// Whether `e` (or what it wraps) is a [`MetaOverflow`].
pub(crate) fn is_meta_overflow(e: &io::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> =
        e.get_ref().map(|r| r as &(dyn std::error::Error + 'static));
    while let Some(c) = cur {
        if c.is::<MetaOverflow>() {
            return true;
        }
        cur = c.source();
    }
    false
}

pub(crate) fn guarded<R: Read>(inner: R) -> (Guarded<R>, Meter) {
    let left = Rc::new(Cell::new(Some(META_MAX)));
    (
        Guarded {
            inner,
            left: left.clone(),
        },
        Meter(left),
    )
}

impl<R> Guarded<R> {
    pub(crate) fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Guarded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.left.get() {
            None => self.inner.read(buf),
            Some(0) if !buf.is_empty() => Err(io::Error::other(MetaOverflow)),
            Some(left) => {
                let cap = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..cap])?;
                self.left.set(Some(left - n as u64));
                Ok(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_entries() {
        let p = |s: &str| s.parse::<UnpackLimit>();
        assert_eq!(p("512M").unwrap().bytes, 512 << 20);
        assert_eq!(p("8G").unwrap().bytes, 8 << 30);
        assert_eq!(p("8gib").unwrap().bytes, 8 << 30);
        assert_eq!(p("1000").unwrap().bytes, 1000);
        assert_eq!(p("1K").unwrap().entries, UnpackLimit::DEFAULT_ENTRIES);
        assert_eq!(
            p("2T,5000").unwrap(),
            UnpackLimit {
                bytes: 2 << 40,
                entries: 5000
            }
        );
        for bad in ["", "M", "0", "12X", "-1G", "1G,", "1G,0", "99999999999T"] {
            let e = p(bad).unwrap_err();
            assert!(
                e.to_string().starts_with("Invalid unpack limit"),
                "{bad}: {e}"
            );
        }
        assert_eq!(human(1 << 20), "1 MiB");
        assert_eq!(human(16 << 30), "16 GiB");
        assert_eq!(human(1500), "1500 bytes");
        assert_eq!(UnpackLimit::default().capped_to(1 << 30).bytes, 1 << 30);
    }

    #[test]
    fn budget_counts_entries_and_bytes() {
        let mut b = Budget::new(UnpackLimit {
            bytes: 100,
            entries: 3,
        });
        b.entry(60).unwrap();
        assert_eq!(b.bytes_left(), 40);
        assert_eq!(b.entry(41), Err(Exceeded::Bytes(100)));
        let mut b = Budget::new(UnpackLimit {
            bytes: 100,
            entries: 2,
        });
        b.entry(0).unwrap();
        b.entry(0).unwrap();
        assert_eq!(b.entry(0), Err(Exceeded::Entries(2)));
    }

    #[test]
    fn guarded_reader_bounds_metadata_only() {
        let (mut r, meter) = guarded(io::repeat(0).take(3 * META_MAX));
        meter.in_entry();
        let mut sink = Vec::new();
        (&mut r).take(2 * META_MAX).read_to_end(&mut sink).unwrap();
        meter.between_entries();
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(is_meta_overflow(&e), "{e}");
    }
}
