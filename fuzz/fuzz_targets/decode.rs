//! Arbitrary bytes into the frame `Decoder`: it must never panic, and after the garbage a 0x00
//! and one valid frame must bring it back in sync (that frame is the last thing decoded).
//! The first input byte picks how the bytes are cut into `feed` calls.
#![no_main]

use fcvm_proto::codec::{encode, Decoder};
use fcvm_proto::{Frame, Msg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, garbage)) = data.split_first() else {
        return;
    };
    let good = Frame {
        stream: 42,
        msg: Msg::Stdout(b"after the garbage".to_vec()),
    };
    let mut bytes = garbage.to_vec();
    bytes.push(0);
    bytes.extend(encode(&good).expect("encodes"));
    let piece = 1 + cut as usize;
    let mut d = Decoder::new();
    let mut last = None;
    for chunk in bytes.chunks(piece) {
        d.feed(chunk);
        while let Some(r) = d.next_frame() {
            last = Some(r);
        }
    }
    assert_eq!(last, Some(Ok(good)));
});
