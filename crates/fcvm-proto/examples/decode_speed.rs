//! Decoder throughput on junk and on real frames (issue 12 D: the decoder must be linear in its
//! input). A benchmark: prints MB/s, asserts nothing.
//!
//! ```text
//! cargo run --release -p fcvm-proto --example decode_speed [MiB]
//! ```
//!
//! Each input (8 MiB unless given) is fed in 64 KiB reads, as the agent's and the host's
//! readers do, and every frame or error is taken out after each read; the best of three runs
//! is printed (the machine is shared).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "figures and diagnostics"
)]

use fcvm_proto::codec::{encode, Decoder};
use fcvm_proto::{Frame, Msg, MAX_CHUNK};
use std::time::Instant;

/// xorshift64*: deterministic bytes with no dependency.
fn random_bytes(n: usize, zeros: bool) -> Vec<u8> {
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let b = (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
            if zeros {
                b
            } else {
                b | 1
            }
        })
        .collect()
}

fn real_frames(n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + MAX_CHUNK);
    let payload: Vec<u8> = random_bytes(MAX_CHUNK, true);
    let mut i = 0u32;
    while out.len() < n {
        let msg = if i % 4 == 3 {
            Msg::Credit(65536)
        } else {
            Msg::Stdout(payload[..MAX_CHUNK >> (i % 4)].to_vec())
        };
        out.extend(
            encode(&Frame {
                stream: 3 + i % 5,
                msg,
            })
            .expect("encodes"),
        );
        i += 1;
    }
    out
}

/// Feeds `input` in 64 KiB pieces; returns (frames, errors, MB/s).
fn measure(input: &[u8]) -> (usize, usize, f64) {
    let t0 = Instant::now();
    let mut d = Decoder::new();
    let (mut frames, mut errors) = (0, 0);
    for piece in input.chunks(64 * 1024) {
        d.feed(piece);
        while let Some(r) = d.next_frame() {
            match r {
                Ok(_) => frames += 1,
                Err(_) => errors += 1,
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    (frames, errors, input.len() as f64 / secs / 1e6)
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(8);
    let n = mib << 20;
    let inputs: Vec<(&str, Vec<u8>)> = vec![
        ("zeros", vec![0u8; n]),
        ("random, no zeros", random_bytes(n, false)),
        ("random, with zeros", random_bytes(n, true)),
        ("real frames", real_frames(n)),
    ];
    println!(
        "{:<20} {:>10} {:>10} {:>10}",
        "input", "frames", "errors", "MB/s"
    );
    for (name, input) in &inputs {
        let runs = [measure(input), measure(input), measure(input)];
        let (frames, errors, rate) = runs
            .into_iter()
            .max_by(|a, b| a.2.total_cmp(&b.2))
            .expect("three runs");
        println!("{name:<20} {frames:>10} {errors:>10} {rate:>10.1}");
    }
}
