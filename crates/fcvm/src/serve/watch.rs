//! envd's watch calls over agent watches (protocol 7, docs/protocol.md §4): `WatchDir` (a
//! server stream: a start event, then each change as it happens) and the polled watcher of
//! `CreateWatcher` / `GetWatcherEvents` / `RemoveWatcher`.
//!
//! The watch lives in the agent (inotify inside the container's root, as the request's user);
//! the host only asks for its events. A `WatchDir` stream asks again as soon as an answer
//! came (each waits up to [`POLL`] in the agent for the next event), so a change reaches the
//! client as it happens; the watch is removed when the client goes away. A watcher of
//! `CreateWatcher` is the agent's, named by its id, until `RemoveWatcher` or the sandbox's end.
//! A watch holds a bounded number of unread events: past it, a `WatchDir` stream sends what
//! was held and ends with `data_loss`, and `GetWatcherEvents` answers
//! `data_loss` (the watcher is gone either way).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use fcvm_proto::{FsEvent, FsEventKind, FsOp, FsReply};

use super::connect::rpc_fs_error;
use super::connect::{self, Code, RpcError};
use super::envd::{async_stream, keepalive, sandbox, unary, user};
use super::fspb::{self, FilesystemEvent, WatchDirEvent};
use super::sandbox::Sandbox;
use super::Server;
use crate::session::fs::FsError;

/// How long one agent request of a `WatchDir` stream waits for an event.
const POLL: Duration = Duration::from_secs(1);

fn event(e: FsEvent) -> FilesystemEvent {
    FilesystemEvent {
        name: e.name,
        kind: match e.kind {
            FsEventKind::Create => fspb::EventType::Create,
            FsEventKind::Write => fspb::EventType::Write,
            FsEventKind::Remove => fspb::EventType::Remove,
            FsEventKind::Rename => fspb::EventType::Rename,
            FsEventKind::Chmod => fspb::EventType::Chmod,
        },
    }
}

fn overflowed() -> RpcError {
    RpcError::new(
        Code::DataLoss,
        "events were dropped: more unread events than the watcher holds; the watcher ended",
    )
}

fn unexpected() -> RpcError {
    RpcError::new(Code::Internal, "unexpected answer from the agent")
}

/// Starts an agent watch of `r` as `who`: its id.
async fn start(sbx: &Sandbox, who: &str, r: fspb::WatchRequest) -> Result<u64, RpcError> {
    let who = &super::defaults::file_user(sbx, who).await;
    let op = FsOp::Watch {
        path: r.path,
        recursive: r.recursive,
    };
    match sbx.vm.session.fs(who, op).await.map_err(rpc_fs_error)? {
        FsReply::Watching { id } => Ok(id),
        _ => Err(unexpected()),
    }
}

/// One answer of watch `id`'s events: (events, more, overflowed).
async fn poll(
    sbx: &Sandbox,
    id: u64,
    wait: Duration,
) -> Result<(Vec<FsEvent>, bool, bool), FsError> {
    let op = FsOp::WatchEvents {
        id,
        wait_ms: wait.as_millis() as u32,
    };
    match sbx.vm.session.fs("", op).await? {
        FsReply::Events {
            events,
            more,
            overflowed,
        } => Ok((events, more, overflowed)),
        _ => Err(FsError::Unexpected("another reply")),
    }
}

/// Best effort: the watch may be gone already (overflowed, or its VM ended).
async fn remove(sbx: &Sandbox, id: u64) {
    let _ = sbx.vm.session.fs("", FsOp::Unwatch { id }).await;
}

/// `filesystem.Filesystem/WatchDir` (server stream).
pub async fn watch_dir(s: &Server, headers: &HeaderMap, body: &[u8]) -> Response {
    let codec = match connect::check_codec(headers, true) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let sbx = match sandbox(s, headers, true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let started = async {
        let who = user(headers)?;
        let req: fspb::WatchRequest = connect::single_message(codec, body)?;
        start(&sbx, &who, req).await
    };
    let id = match started.await {
        Ok(id) => id,
        Err(e) => return connect::stream_response(codec, connect::end_stream(Some(&e))),
    };
    let period = keepalive(headers);
    let msg = move |e: &WatchDirEvent| {
        connect::stream_message(codec, &fspb::WatchDirResponse { event: e })
    };
    let body = async_stream(move |tx| async move {
        let sbx: Arc<Sandbox> = sbx;
        if tx.send(msg(&WatchDirEvent::Start {})).await.is_err() {
            return remove(&sbx, id).await;
        }
        let mut quiet_since = Instant::now();
        loop {
            let end = match poll(&sbx, id, POLL).await {
                Ok((events, _, over)) => {
                    for e in events {
                        quiet_since = Instant::now();
                        if tx
                            .send(msg(&WatchDirEvent::Filesystem(event(e))))
                            .await
                            .is_err()
                        {
                            return remove(&sbx, id).await;
                        }
                    }
                    over.then(overflowed)
                }
                Err(e) => Some(rpc_fs_error(e)),
            };
            if let Some(e) = end {
                let _ = tx.send(connect::end_stream(Some(&e))).await;
                return remove(&sbx, id).await;
            }
            if period.is_some_and(|p| quiet_since.elapsed() >= p) {
                quiet_since = Instant::now();
                if tx.send(msg(&WatchDirEvent::Keepalive {})).await.is_err() {
                    return remove(&sbx, id).await;
                }
            }
            if tx.is_closed() {
                return remove(&sbx, id).await;
            }
        }
    });
    connect::stream_response(codec, body)
}

/// The watcher id of a request: the agent's watch id (an unknown one is `not_found`).
fn watcher_id(s: &str) -> Result<u64, RpcError> {
    s.parse()
        .map_err(|_| RpcError::new(Code::NotFound, format!("watcher {s:?} not found")))
}

pub async fn create_watcher(s: &Server, headers: &HeaderMap, body: &[u8]) -> Response {
    let who = match user(headers) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    unary(s, headers, body, |sbx, r: fspb::WatchRequest| async move {
        let id = start(&sbx, &who, r).await?;
        Ok(fspb::CreateWatcherResponse {
            watcher_id: id.to_string(),
        })
    })
    .await
}

pub async fn get_watcher_events(s: &Server, headers: &HeaderMap, body: &[u8]) -> Response {
    unary(
        s,
        headers,
        body,
        |sbx, r: fspb::WatcherRequest| async move {
            let id = watcher_id(&r.watcher_id)?;
            let mut all = Vec::new();
            loop {
                let (events, more, over) =
                    poll(&sbx, id, Duration::ZERO).await.map_err(rpc_fs_error)?;
                all.extend(events.into_iter().map(event));
                if over {
                    return Err(overflowed());
                }
                if !more {
                    return Ok(fspb::GetWatcherEventsResponse { events: all });
                }
            }
        },
    )
    .await
}

pub async fn remove_watcher(s: &Server, headers: &HeaderMap, body: &[u8]) -> Response {
    unary(
        s,
        headers,
        body,
        |sbx, r: fspb::WatcherRequest| async move {
            let id = watcher_id(&r.watcher_id)?;
            let op = FsOp::Unwatch { id };
            sbx.vm.session.fs("", op).await.map_err(rpc_fs_error)?;
            Ok(fspb::Empty {})
        },
    )
    .await
}
