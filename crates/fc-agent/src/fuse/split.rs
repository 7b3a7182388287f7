//! A kernel read or write larger than one map request: sent as several requests at once,
//! answered when all are (docs/volumes.md, "Reads").
//!
//! The mount takes requests of up to [`KERNEL_IO`] (1 MiB, so a large read costs one round
//! trip, not nine), but `Read` and `Write` carry their data in one frame, at most `MAP_MAX_IO`
//! (120 KiB). [`read`] and [`write`] cut a kernel request into such parts, send them all (the
//! host serves them in parallel), and answer the kernel with the longest run of whole parts
//! from the start, as a file system answers a short read or write: the first error or short
//! part ends it.

use std::sync::{Arc, Mutex};

use fcvm_proto::map::{MapData, MapOp, MAP_MAX_IO, MAP_MAX_PLACED};
use fuser::{Errno, ReplyData, ReplyWrite};

use super::client::Client;

/// Largest read or write the kernel sends a map (`max_read`, `max_write`).
pub const KERNEL_IO: usize = MAP_MAX_PLACED;

type Done<T> = Box<dyn FnOnce(Vec<Result<T, i32>>) + Send>;

/// The answers of `n` parts, in order; `done` runs with all of them once the last is in.
struct Gather<T> {
    state: Mutex<State<T>>,
}

/// The answers so far, how many are missing, and what to run when none is.
type State<T> = (Vec<Option<Result<T, i32>>>, usize, Option<Done<T>>);

impl<T: Send + 'static> Gather<T> {
    fn new(n: usize, done: Done<T>) -> Arc<Gather<T>> {
        let parts = std::iter::repeat_with(|| None).take(n).collect();
        Arc::new(Gather {
            state: Mutex::new((parts, n, Some(done))),
        })
    }

    fn part(&self, i: usize, r: Result<T, i32>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.2.is_none() {
            return; // answered already
        }
        if st.0[i].replace(r).is_none() {
            st.1 -= 1;
        }
        if st.1 == 0 {
            if let Some(done) = st.2.take() {
                let parts = st.0.iter_mut().filter_map(Option::take).collect();
                drop(st);
                done(parts);
            }
        }
    }
}

/// The lengths of the parts of `size` bytes.
fn parts(size: usize) -> Vec<usize> {
    (0..size.div_ceil(MAP_MAX_IO).max(1))
        .map(|i| (size - i * MAP_MAX_IO).min(MAP_MAX_IO))
        .collect()
}

/// Reads `size` bytes of `path` at `offset` with `Read`s of at most `MAP_MAX_IO`.
pub fn read(client: &Client, map: u32, path: String, offset: u64, size: usize, reply: ReplyData) {
    let lens = parts(size);
    let want = lens.clone();
    let g = Gather::new(
        lens.len(),
        Box::new(move |answers: Vec<Result<Vec<u8>, i32>>| {
            let mut out = Vec::with_capacity(size);
            for (a, want) in answers.into_iter().zip(want) {
                match a {
                    Ok(d) => {
                        out.extend_from_slice(&d);
                        if d.len() < want {
                            break;
                        }
                    }
                    Err(e) if out.is_empty() => return reply.error(Errno::from_i32(e)),
                    Err(_) => break,
                }
            }
            reply.data(&out)
        }),
    );
    let mut at = offset;
    let ops = lens.into_iter().map(|len| {
        let op = MapOp::Read {
            path: path.clone(),
            offset: at,
            len: len as u32,
        };
        at += len as u64;
        op
    });
    send(client, map, &g, ops, |d| match d {
        MapData::Data(d) => Some(d),
        _ => None,
    });
}

/// Writes `data` to `path` at `offset` with `Write`s of at most `MAP_MAX_IO`.
pub fn write(client: &Client, map: u32, path: String, offset: u64, data: &[u8], reply: ReplyWrite) {
    let lens = parts(data.len());
    let want = lens.clone();
    let g = Gather::new(
        lens.len(),
        Box::new(move |answers: Vec<Result<u32, i32>>| {
            let mut written = 0u32;
            for (a, want) in answers.into_iter().zip(want) {
                match a {
                    Ok(n) => {
                        written += n;
                        if (n as usize) < want {
                            break;
                        }
                    }
                    Err(e) if written == 0 => return reply.error(Errno::from_i32(e)),
                    Err(_) => break,
                }
            }
            reply.written(written)
        }),
    );
    let mut at = 0;
    let ops = lens.into_iter().map(|len| {
        let op = MapOp::Write {
            path: path.clone(),
            offset: offset + at as u64,
            data: data[at..at + len].to_vec(),
        };
        at += len;
        op
    });
    send(client, map, &g, ops, |d| match d {
        MapData::Written(n) => Some(n),
        _ => None,
    });
}

/// Sends part `i` of `g` as the `i`th of `ops`; `take` picks the part's answer out of its
/// reply (any other reply is `EIO`).
fn send<T: Send + 'static>(
    client: &Client,
    map: u32,
    g: &Arc<Gather<T>>,
    ops: impl Iterator<Item = MapOp>,
    take: fn(MapData) -> Option<T>,
) {
    for (i, op) in ops.enumerate() {
        let g = g.clone();
        client.call(
            map,
            op,
            Box::new(move |r| g.part(i, r.and_then(|d| take(d).ok_or(libc::EIO)))),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_cut_into_frame_sized_parts() {
        assert_eq!(parts(0), [0]);
        assert_eq!(parts(10), [10]);
        assert_eq!(parts(MAP_MAX_IO), [MAP_MAX_IO]);
        assert_eq!(parts(MAP_MAX_IO + 1), [MAP_MAX_IO, 1]);
        assert_eq!(parts(KERNEL_IO).iter().sum::<usize>(), KERNEL_IO);
    }

    /// The answer comes once, with every part in order, whatever order they arrive in.
    #[test]
    fn parts_are_gathered_in_order_once() {
        let got = Arc::new(Mutex::new(vec![]));
        let g2 = got.clone();
        let g = Gather::new(
            3,
            Box::new(move |v: Vec<Result<u32, i32>>| g2.lock().unwrap().push(v)),
        );
        g.part(2, Ok(3));
        g.part(0, Ok(1));
        assert!(got.lock().unwrap().is_empty());
        g.part(1, Err(5));
        g.part(1, Ok(9)); // a late duplicate changes nothing
        assert_eq!(*got.lock().unwrap(), [vec![Ok(1), Err(5), Ok(3)]]);
    }
}
