//! A hostile guest's bytes into the host's side of the session: the frame `Decoder` and the
//! session's dispatch (`Inbound`, with its stream and control queues), as the owner's reader
//! task runs them. Nothing may panic, and nothing may grow with the input: every stream queue
//! stays within its credit and entry bound, the control queue within its cap, the log lines
//! within the rate.
//!
//! The input is a little program, so that most of it reaches the dispatch as valid frames
//! rather than dying at the checksum: each op byte picks raw garbage, a frame (output, log,
//! control, end of stream, …) on one of the open streams or an unknown one, a damaged frame,
//! the consumer of stream 1 draining (and granting credit) — stream 2's consumer never does —
//! or time passing.
#![no_main]

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use fcvm_proto::codec::{encode, Decoder};
use fcvm_proto::{AgentInfo, ErrorKind, Frame, LogLevel, Msg, INITIAL_OUTPUT_CREDIT, MAX_CHUNK};
use libfuzzer_sys::fuzz_target;

// The host's own modules (`fcvm::session::{inbound, queue}`), compiled here from their
// source, siblings as there: the `fcvm` crate as a whole would bring a registry client, TLS
// and compressors into the instrumented build for nothing.
#[allow(dead_code)]
#[path = "../../crates/fcvm/src/session/inbound.rs"]
mod inbound;
#[allow(dead_code)]
#[path = "../../crates/fcvm/src/session/queue.rs"]
mod queue;

use inbound::{Effect, Inbound, Streams, LOG_LINE_MAX, LOG_RATE};
use queue::{ControlQueue, StreamKind, StreamQueue, CONTROL_QUEUE, MAX_ENTRIES, MAX_HELD};

/// Reads the program's operands; zeros once it runs out.
struct Ops<'a>(&'a [u8]);

impl Ops<'_> {
    fn byte(&mut self) -> u8 {
        let Some((&b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        b
    }

    fn len(&mut self, max: usize) -> usize {
        let n = (self.byte() as usize) << 8 | self.byte() as usize;
        (n * 37) % (max + 1)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops(data);
    let streams = Streams::default();
    let control = Arc::new(ControlQueue::default());
    let mut inbound = Inbound::new(streams.clone(), control.clone());
    let queues: Vec<Arc<StreamQueue>> = vec![
        streams.open(1, StreamKind::Process),
        streams.open(2, StreamKind::Process),
        streams.open(3, StreamKind::Probe),
        streams.open(4, StreamKind::Attached),
    ];
    let t0 = Instant::now();
    let mut now = t0;
    let mut dec = Decoder::new();
    let mut logged = 0u64;
    let mut closed = [false; 4];
    while !ops.0.is_empty() {
        let op = ops.byte();
        let stream = match ops.byte() % 6 {
            5 => 77,
            s => s as u32,
        };
        let msg = match op % 12 {
            0 => {
                let n = ops.len(4096);
                dec.feed(&ops.bytes(n));
                None
            }
            1 => Some(Msg::Stdout(vec![b'o'; ops.len(MAX_CHUNK)])),
            2 => Some(Msg::Stderr(vec![b'e'; ops.len(MAX_CHUNK)])),
            3 => {
                let message = "l".repeat(ops.len(20_000));
                Some(Msg::Log {
                    level: LogLevel::Warn,
                    message,
                })
            }
            4 => Some(Msg::HelloAck {
                epoch: ops.byte() as u64,
                version: 5,
                info: AgentInfo::default(),
            }),
            5 => Some(Msg::Started {
                pid: 1,
                spawn_us: 2,
            }),
            6 => Some(match ops.byte() % 3 {
                0 => Msg::Exit { code: 0, run_us: 1 },
                1 => Msg::Error {
                    kind: ErrorKind::Failed,
                    message: "x".into(),
                },
                _ => Msg::HttpStatus { code: 200 },
            }),
            7 => Some(Msg::Credit(u32::MAX - ops.byte() as u32)),
            8 => {
                // A frame damaged in flight: one byte changed.
                let mut b = encode(&Frame {
                    stream,
                    msg: Msg::Stdout(vec![1; ops.len(64)]),
                })
                .unwrap();
                let i = ops.len(b.len() - 1);
                b[i] ^= ops.byte() | 1;
                dec.feed(&b);
                None
            }
            9 => {
                // Stream 1's consumer writes everything out and grants it back.
                while let Poll::Ready(Some(m)) = queues[0].try_recv() {
                    if let Msg::Stdout(d) | Msg::Stderr(d) = m {
                        queues[0].drained(d.len());
                    }
                }
                None
            }
            10 => {
                now += Duration::from_millis(ops.byte() as u64 * 10);
                None
            }
            _ => Some(Msg::Hello {
                epoch: 1,
                version: 1,
                random_seed: ops.bytes(8),
            }),
        };
        if let Some(msg) = msg {
            dec.feed(&encode(&Frame { stream, msg }).unwrap());
        }
        while let Some(r) = dec.next_frame() {
            match inbound.frame(r, now) {
                Some(Effect::Close(id)) => {
                    assert!(
                        (1..=4).contains(&id),
                        "close of a stream nobody opened: {id}"
                    );
                    closed[id as usize - 1] = true;
                }
                Some(Effect::Log(_, line)) => {
                    assert!(line.len() <= LOG_LINE_MAX + 100);
                    logged += line.len() as u64;
                }
                None => {}
            }
            for (i, q) in queues.iter().enumerate() {
                let (entries, bytes) = q.held();
                // The attached stream (4) may also get what the agent queued for an old host.
                let max = if i == 3 {
                    MAX_HELD
                } else {
                    INITIAL_OUTPUT_CREDIT as usize
                };
                assert!(bytes <= max, "{bytes} bytes held on stream {}", i + 1);
                assert!(entries <= MAX_ENTRIES, "{entries} entries held");
            }
            assert!(control.held() <= CONTROL_QUEUE);
        }
    }
    // The log budget: a burst, then the rate.
    let elapsed = now.duration_since(t0).as_secs_f64();
    assert!(
        logged as f64 <= 256.0 * 1024.0 + elapsed * LOG_RATE as f64 + 1.0,
        "{logged} log bytes in {elapsed}s"
    );
    inbound.lost();
    for (q, closed) in queues.iter().zip(closed) {
        // After the connection is gone every stream ends once read (a failed one with its error).
        let mut n = 0;
        while let Poll::Ready(Some(_)) = q.try_recv() {
            n += 1;
            assert!(n <= MAX_ENTRIES + 1);
        }
        assert_eq!(
            q.try_recv(),
            Poll::Ready(None),
            "stream (closed: {closed}) still open after the loss"
        );
    }
});
