//! The agent's side of the map channel: FUSE requests become `MapRequest`s to the host, and
//! each `MapReply` finishes the request it names (docs/volumes.md).
//!
//! 1. [`Client::call`] waits while [`MAP_IN_FLIGHT`] requests are unanswered (the FUSE thread
//!    blocks, so the kernel queues further requests itself), then records the request and
//!    sends it.
//! 2. [`Client::reply`] (the channel's reader thread) takes the request out and runs its
//!    completion, which answers the kernel; a reply for an unknown id (answered already, or
//!    from an old host) is dropped.
//! 3. [`Client::resend`] (a new epoch: a restored VM's new host) sends every unanswered
//!    request again, with its id: the old host's answers will never come, and the host keeps
//!    nothing between requests, so the new one answers them like any other.

use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex, MutexGuard};

use fcvm_proto::map::{MapData, MapOp, MAP_IN_FLIGHT};
use fcvm_proto::{Frame, MapReply, MapRequest, Msg};

use crate::channel::Outbox;

/// What to do with the host's answer: data or an errno.
pub type Done = Box<dyn FnOnce(Result<MapData, i32>) + Send>;

struct Call {
    map: u32,
    op: MapOp,
    done: Done,
}

#[derive(Default)]
struct State {
    next: u64,
    pending: BTreeMap<u64, Call>,
}

pub struct Client {
    out: Outbox,
    state: Mutex<State>,
    room: Condvar,
}

impl Client {
    pub fn new(out: Outbox) -> Client {
        Client {
            out,
            state: Mutex::default(),
            room: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `op` on map `map`; `done` runs with the answer (on the channel's reader thread:
    /// it must not block).
    pub fn call(&self, map: u32, op: MapOp, done: Done) {
        let mut st = self.lock();
        while st.pending.len() >= MAP_IN_FLIGHT {
            st = self.room.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.next += 1;
        let id = st.next;
        let frame = request(id, map, op.clone());
        st.pending.insert(id, Call { map, op, done });
        drop(st);
        self.out.send(frame);
    }

    /// The host's answer to a request.
    pub fn reply(&self, r: MapReply) {
        let call = self.lock().pending.remove(&r.id);
        self.room.notify_one();
        if let Some(c) = call {
            (c.done)(r.result);
        }
    }

    /// Sends every unanswered request again (a new host took over).
    pub fn resend(&self) {
        let frames: Vec<Frame> = self
            .lock()
            .pending
            .iter()
            .map(|(id, c)| request(*id, c.map, c.op.clone()))
            .collect();
        for f in frames {
            self.out.send(f);
        }
    }

    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.lock().pending.len()
    }
}

fn request(id: u64, map: u32, op: MapOp) -> Frame {
    Frame::control(Msg::MapRequest(MapRequest { id, map, op }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fcvm_proto::codec::Decoder;
    use std::sync::mpsc::Receiver;
    use std::sync::Arc;

    fn sent(rx: &Receiver<Vec<u8>>) -> Vec<MapRequest> {
        let mut d = Decoder::new();
        while let Ok(b) = rx.try_recv() {
            d.feed(&b);
        }
        std::iter::from_fn(|| d.next_frame())
            .filter_map(|f| match f.unwrap().msg {
                Msg::MapRequest(r) => Some(r),
                _ => None,
            })
            .collect()
    }

    /// Unanswered requests are resent with their ids after a new epoch; each completes once,
    /// whichever host answers first; a late duplicate answer is dropped.
    #[test]
    fn unanswered_requests_are_resent_and_complete_once() {
        let (out, rx, _) = Outbox::new();
        let c = Client::new(out);
        let got = Arc::new(Mutex::new(vec![]));
        for path in ["a", "b"] {
            let got = got.clone();
            let op = MapOp::Stat { path: path.into() };
            c.call(0, op, Box::new(move |r| got.lock().unwrap().push(r)));
        }
        let first = sent(&rx);
        assert_eq!(first.len(), 2);
        c.reply(MapReply {
            id: first[0].id,
            result: Ok(MapData::Done),
        });
        c.resend();
        let again = sent(&rx);
        assert_eq!(again, first[1..], "only the unanswered one, same id");
        let answer = || MapReply {
            id: first[1].id,
            result: Err(libc::ENOENT),
        };
        c.reply(answer());
        c.reply(answer());
        assert_eq!(*got.lock().unwrap(), [Ok(MapData::Done), Err(libc::ENOENT)]);
        assert_eq!(c.in_flight(), 0);
    }

    /// A caller waits while MAP_IN_FLIGHT requests are unanswered.
    #[test]
    fn in_flight_is_bounded() {
        let (out, rx, _) = Outbox::new();
        let c = Arc::new(Client::new(out));
        for _ in 0..MAP_IN_FLIGHT {
            c.call(0, MapOp::StatFs, Box::new(|_| {}));
        }
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.call(0, MapOp::StatFs, Box::new(|_| {})));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(sent(&rx).len(), MAP_IN_FLIGHT, "the extra one waits");
        c.reply(MapReply {
            id: 1,
            result: Ok(MapData::Done),
        });
        t.join().unwrap();
        assert_eq!(sent(&rx).len(), 1);
        assert_eq!(c.in_flight(), MAP_IN_FLIGHT);
    }
}
