//! A test peer: the far end of a session's socket, speaking the real codec (as an agent, an
//! exec client or a hostile one would).

use std::time::Duration;

use fcvm_proto::codec::encode;
use fcvm_proto::{Frame, Msg};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

use super::FrameReader;

/// Failure bound of every wait in these tests.
pub const LIMIT: Duration = Duration::from_secs(10);

pub struct Peer {
    rd: FrameReader,
    wr: OwnedWriteHalf,
}

/// A connected host end and the peer on its other end.
pub fn pair() -> (UnixStream, Peer) {
    let (host, peer) = UnixStream::pair().unwrap();
    (host, Peer::new(peer))
}

impl Peer {
    pub fn new(s: UnixStream) -> Peer {
        let (rd, wr) = s.into_split();
        Peer {
            rd: FrameReader::new(rd),
            wr,
        }
    }

    pub async fn send(&mut self, stream: u32, msg: Msg) {
        let bytes = encode(&Frame { stream, msg }).unwrap();
        self.wr.write_all(&bytes).await.unwrap();
    }

    /// The next frame from the host (a test failure if none comes).
    pub async fn recv(&mut self) -> Frame {
        match self.recv_within(LIMIT).await {
            Some(f) => f,
            None => panic!("no frame from the host within {LIMIT:?}"),
        }
    }

    /// The next frame if one comes within `wait` (for checking that none does).
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Frame> {
        match tokio::time::timeout(wait, self.rd.next()).await {
            Ok(Some(Ok(f))) => Some(f),
            Ok(other) => panic!("connection ended: {other:?}"),
            Err(_) => None,
        }
    }
}
