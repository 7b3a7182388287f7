//! File operations in the VM's container (protocol 6): each `FsRequest` goes on a stream of its
//! own (an answer-once stream, like a probe's) and waits for its one `FsReply` or `FsError`.
//! Files larger than a frame move in [`MAX_CHUNK`] pieces, one request each: [`Session::write_file`]
//! writes them in order, [`FileReader`] asks for the next one when its caller wants it, so what
//! is in flight for a file is one chunk.

use std::time::Duration;

use fcvm_proto::{Frame, FsErrorKind, FsOp, FsReply, FsRequest, Msg, MAX_CHUNK};

use super::queue::StreamKind;
use super::{Session, SessionError};

/// How long one request may take in the guest (a chunk, a listing, a recursive remove).
pub const FS_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The agent's answer: what failed in the container.
    #[error("{message}")]
    Agent { kind: FsErrorKind, message: String },
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("The agent answered a file request with {0}")]
    Unexpected(&'static str),
}

impl FsError {
    /// The agent's kind of failure, if it answered with one.
    pub fn kind(&self) -> Option<FsErrorKind> {
        match self {
            FsError::Agent { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

impl Session {
    /// Runs `op` in the container as `user` (`user[:group]`, empty: root).
    pub async fn fs(&self, user: &str, op: FsOp) -> Result<FsReply, FsError> {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let queue = self.streams.open(id, StreamKind::Probe);
        let req = FsRequest {
            user: user.into(),
            op,
        };
        let wait = async {
            let frame = Frame {
                stream: id,
                msg: Msg::FsRequest(req),
            };
            if !self.out.send(frame).await {
                return Err(FsError::Session(SessionError::Lost));
            }
            match queue.recv().await {
                Some(Msg::FsReply(r)) => Ok(r),
                Some(Msg::FsError { kind, message }) => Err(FsError::Agent { kind, message }),
                Some(Msg::Error { message, .. }) => Err(SessionError::Agent(message).into()),
                Some(m) => Err(FsError::Unexpected(m.name())),
                None => Err(SessionError::Lost.into()),
            }
        };
        let r = tokio::time::timeout(FS_TIMEOUT, wait)
            .await
            .unwrap_or(Err(SessionError::Timeout(FS_TIMEOUT).into()));
        self.streams.remove(id);
        r
    }

    /// Writes `data` to `path` (created with its parents, or truncated), chunk by chunk; the
    /// entry of the file written.
    pub async fn write_file(
        &self,
        user: &str,
        path: &str,
        data: &[u8],
    ) -> Result<fcvm_proto::FsEntry, FsError> {
        let mut offset = 0;
        loop {
            let end = (offset + MAX_CHUNK).min(data.len());
            let op = FsOp::Write {
                path: path.into(),
                offset: offset as u64,
                data: data[offset..end].to_vec(),
                truncate: offset == 0,
            };
            let reply = self.fs(user, op).await?;
            offset = end;
            if offset >= data.len() {
                return match reply {
                    FsReply::Entry(e) => Ok(e),
                    _ => Err(FsError::Unexpected("another reply")),
                };
            }
        }
    }

    /// Every entry of directory `path`, `depth` levels down (asking again while more follow).
    pub async fn list_dir(
        &self,
        user: &str,
        path: &str,
        depth: u32,
    ) -> Result<Vec<fcvm_proto::FsEntry>, FsError> {
        let mut all = Vec::new();
        loop {
            let op = FsOp::List {
                path: path.into(),
                depth,
                skip: all.len() as u32,
            };
            match self.fs(user, op).await? {
                FsReply::Entries { entries, more } => {
                    let got = entries.len();
                    all.extend(entries);
                    if !more || got == 0 {
                        return Ok(all);
                    }
                }
                _ => return Err(FsError::Unexpected("another reply")),
            }
        }
    }
}

/// Reads a file chunk by chunk: each [`FileReader::next`] is one request.
pub struct FileReader {
    user: String,
    path: String,
    offset: u64,
    done: bool,
}

impl FileReader {
    pub fn new(user: &str, path: &str) -> FileReader {
        FileReader {
            user: user.into(),
            path: path.into(),
            offset: 0,
            done: false,
        }
    }

    /// The next chunk; `None` after the end.
    pub async fn next(&mut self, s: &Session) -> Option<Result<Vec<u8>, FsError>> {
        if self.done {
            return None;
        }
        let op = FsOp::Read {
            path: self.path.clone(),
            offset: self.offset,
            len: MAX_CHUNK as u32,
        };
        let r = match s.fs(&self.user, op).await {
            Ok(FsReply::Data { data, eof }) => {
                self.offset += data.len() as u64;
                self.done = eof || data.is_empty();
                Ok(data)
            }
            Ok(_) => Err(FsError::Unexpected("another reply")),
            Err(e) => Err(e),
        };
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}
