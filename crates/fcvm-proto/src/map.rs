//! Wire types of host directory maps (`--map HOST:GUEST[:ro]`, protocol 7; docs/volumes.md).
//!
//! The guest sees each map as a FUSE mount that the agent serves by asking the host: the
//! agent turns each FUSE request into a [`MapRequest`] (agent → host, control stream) and
//! answers the kernel when the matching [`MapReply`] (host → agent) arrives. Requests name
//! files by their path relative to the map's root (never by a host handle), so a new host —
//! after a snapshot restore, or a clone serving another directory — can answer a request the
//! old one never saw: the agent resends every request still unanswered when a new epoch
//! begins.
//!
//! ```text
//! agent → host   MapRequest { id, map, op: MapOp }      at most MAP_IN_FLIGHT unanswered
//! host → agent   MapReply   { id, result: Ok(MapData) | Err(errno) }
//! ```

use serde::{Deserialize, Serialize};

/// Requests the agent may have unanswered at once (across every map of the VM); the host's
/// queue of map requests holds as many.
pub const MAP_IN_FLIGHT: usize = 16;

/// Largest `Read` or `Write` payload: one frame, with a path of [`MAP_MAX_PATH`] and COBS's
/// overhead, under the codec's limit (`codec::MAX_ENCODED`, 128 KiB). Each request costs a
/// round trip, so the largest that fits (docs/design.md §20).
pub const MAP_MAX_IO: usize = 120 * 1024;

/// The page size of guest-physical addresses in `MapOp::ReadPages`.
pub const MAP_PAGE: usize = 4096;

/// Largest `MapOp::ReadPages` (its data is not in a frame): the FUSE kernel's largest
/// request, so a large read costs one round trip.
pub const MAP_MAX_PLACED: usize = 1 << 20;

/// `MapOp::ReadPages` names only pages below this guest-physical address (low RAM, where
/// QEMU's RAM file offset is the address); a host refuses others with `EOPNOTSUPP`.
pub const MAP_PAGES_BELOW: u64 = 2 << 30;

/// Longest path a request names (the agent answers `ENAMETOOLONG` beyond).
pub const MAP_MAX_PATH: usize = 4096;

/// Largest encoded size of the entries of one `MapData::Entries`.
pub const MAP_MAX_LIST_BYTES: usize = 32 * 1024;

/// One map as the guest knows it: where it is mounted in the container, and whether it is
/// read-only. The host directory is the host's alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapMount {
    /// Absolute path in the container.
    pub guest: String,
    pub read_only: bool,
}

/// A time to set: the host's "now", or a given time (seconds, nanoseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetTime {
    Now,
    At(i64, u32),
}

/// The ids of the guest process that caused a request (files it creates get them, when the
/// host runs as root).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// What a [`MapRequest`] does. `path` is relative to the map's root ("" is the root itself),
/// made of plain names (no `.`, `..` or empty components).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MapOp {
    /// `MapData::Attr` of the file (a symlink is not followed).
    Stat {
        path: String,
    },
    SetAttr {
        path: String,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<SetTime>,
        mtime: Option<SetTime>,
    },
    /// `MapData::Data`: the link's text.
    ReadLink {
        path: String,
    },
    /// Creates a regular file (`exclusive`: fails if it exists; else truncates nothing and
    /// opens what is there): `MapData::Attr`.
    Create {
        path: String,
        mode: u32,
        exclusive: bool,
        caller: Caller,
    },
    MakeDir {
        path: String,
        mode: u32,
        caller: Caller,
    },
    Symlink {
        path: String,
        target: String,
        caller: Caller,
    },
    /// `MapData::Done`.
    Unlink {
        path: String,
    },
    RemoveDir {
        path: String,
    },
    /// `flags`: renameat2's (RENAME_NOREPLACE, RENAME_EXCHANGE).
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    /// Up to `len` (at most [`MAP_MAX_IO`]) bytes from `offset`: `MapData::Data` (shorter at
    /// the end of the file).
    Read {
        path: String,
        offset: u64,
        len: u32,
    },
    /// `MapData::Written`.
    Write {
        path: String,
        offset: u64,
        #[serde(with = "bytes")]
        data: Vec<u8>,
    },
    /// Directory entries (`.` and `..` included) after the host's position cookie `offset`
    /// (0: from the start; else an entry's `next`): `MapData::Entries`, at most
    /// [`MAP_MAX_LIST_BYTES`] of them; an empty list is the end. Cookies are the host
    /// filesystem's own (`telldir`), so entries removed meanwhile shift nothing.
    ReadDir {
        path: String,
        offset: u64,
    },
    /// `MapData::StatFs` of the host filesystem.
    StatFs,
    /// `ReadDir` with each entry's attributes (`lstat`): `MapData::EntriesPlus`. The guest
    /// kernel then needs no lookup for a file it just listed (a directory walk).
    ReadDirPlus {
        path: String,
        offset: u64,
    },
    /// `Read` whose data the host writes straight into guest memory instead of the reply:
    /// into the guest-physical pages `pages` (each [`MAP_PAGE`] bytes, page-aligned, below
    /// [`MAP_PAGES_BELOW`], in order; enough for `len`, at most [`MAP_MAX_PLACED`]),
    /// answered `MapData::Placed(n)`. The agent's buffer is pinned;
    /// the channel then carries no file data, which under TCG costs the guest's CPU per byte
    /// (docs/design.md §20). A host that cannot reach the VM's memory (or a page) answers
    /// `EOPNOTSUPP` and the agent sends `Read`s instead. The host checks every page lies in
    /// guest RAM.
    ReadPages {
        path: String,
        offset: u64,
        len: u32,
        pages: Vec<u64>,
    },
}

impl MapOp {
    /// Whether the op changes the share (refused on a read-only map, on both sides).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            MapOp::Stat { .. }
                | MapOp::ReadLink { .. }
                | MapOp::Read { .. }
                | MapOp::ReadDir { .. }
                | MapOp::ReadDirPlus { .. }
                | MapOp::ReadPages { .. }
                | MapOp::StatFs
        )
    }
}

/// A file's attributes as the host has them (`lstat`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapAttr {
    pub ino: u64,
    pub size: u64,
    pub blocks: u64,
    pub atime: (i64, u32),
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
    /// `st_mode`: type and permission bits.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub blksize: u32,
}

/// One directory entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDirEntry {
    pub name: String,
    pub ino: u64,
    /// The `S_IFMT` bits of its mode.
    pub kind: u32,
    /// The cookie that resumes the listing after this entry.
    pub next: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapStatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
    pub frsize: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MapData {
    Attr(MapAttr),
    Data(#[serde(with = "bytes")] Vec<u8>),
    Written(u32),
    Entries(Vec<MapDirEntry>),
    StatFs(MapStatFs),
    Done,
    EntriesPlus(Vec<(MapDirEntry, MapAttr)>),
    /// `ReadPages`: this many bytes were written into the pages (shorter at the end of the
    /// file).
    Placed(u32),
}

/// agent → host: one request of map number `map` (an index into the plan's maps).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRequest {
    /// The agent's id for it; a resent request keeps its id.
    pub id: u64,
    pub map: u32,
    pub op: MapOp,
}

/// host → agent: the answer to request `id`: data, or an errno.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapReply {
    pub id: u64,
    pub result: Result<MapData, i32>,
}

/// File data as one byte string rather than a sequence of `u8`s. In postcard both are the
/// same bytes on the wire (a varint length, then the bytes), so this changes no format; but a
/// sequence is (de)serialised one element at a time, which with COBS was most of the per-byte
/// cost of map I/O in the guest's emulated CPU, and a byte string is one copy.
mod bytes {
    use serde::de::{Deserializer, Error, SeqAccess, Visitor};
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(Bytes)
    }

    struct Bytes;

    impl<'de> Visitor<'de> for Bytes {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        /// Formats that write bytes as a sequence (JSON) read back the same way.
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// File data is the same bytes on the wire as a plain `Vec<u8>` (what agents built before
    /// `bytes`, e.g. in a snapshot, send and expect), and reads back whole.
    #[test]
    fn data_is_wire_compatible_with_a_sequence() {
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let plain = postcard::to_stdvec(&data).unwrap();
        let reply = postcard::to_stdvec(&MapData::Data(data.clone())).unwrap();
        assert_eq!(
            reply,
            [&[1u8][..], &plain].concat(),
            "variant 1, then as a Vec<u8>"
        );
        assert_eq!(
            postcard::from_bytes::<MapData>(&reply).unwrap(),
            MapData::Data(data.clone())
        );
        let op = MapOp::Write {
            path: "f".into(),
            offset: 7,
            data: data.clone(),
        };
        let bytes = postcard::to_stdvec(&op).unwrap();
        assert!(bytes.ends_with(&plain));
        assert_eq!(postcard::from_bytes::<MapOp>(&bytes).unwrap(), op);
    }

    /// The largest request and reply fit one frame, whatever their bytes.
    #[test]
    fn the_largest_requests_fit_a_frame() {
        use crate::{codec, Frame, MapReply, MapRequest, Msg};
        let path = "p".repeat(MAP_MAX_PATH);
        let request = |op| {
            let r = MapRequest {
                id: u64::MAX,
                map: u32::MAX,
                op,
            };
            Frame::control(Msg::MapRequest(r))
        };
        for byte in [0u8, 1, 0xFF] {
            let data = vec![byte; MAP_MAX_IO];
            let frames = [
                request(MapOp::Write {
                    path: path.clone(),
                    offset: u64::MAX,
                    data: data.clone(),
                }),
                Frame::control(Msg::MapReply(MapReply {
                    id: u64::MAX,
                    result: Ok(MapData::Data(data)),
                })),
            ];
            for f in frames {
                codec::encode(&f).expect("fits");
            }
        }
    }
}
