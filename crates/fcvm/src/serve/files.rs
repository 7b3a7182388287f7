//! envd's file calls, served on the host as agent file requests (protocol 6; nothing listens
//! in the guest): `GET /files` (download, streamed chunk by chunk), `POST /files` (multipart
//! or octet-stream upload) and the unary `filesystem.Filesystem` calls Stat, MakeDir, Move,
//! ListDir and Remove; the watch calls are [`super::watch`]'s.
//!
//! The user of a call is the `username` query parameter (`/files`) or the Basic
//! `Authorization` header (RPCs), else E2B's `user` where the image has it, else root
//! ([`super::defaults`]); paths are the container's, relative ones against
//! that user's home (docs/serve.md).

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fcvm_proto::{FsEntry, FsErrorKind, FsKind, FsOp, FsReply};

use super::connect::{rpc_fs_error, Code, RpcError};
use super::defaults::file_user;
use super::envd::{sandbox, unary, user};
use super::fspb::{self, EntryInfo};
use super::sandbox::Sandbox;
use super::Server;
use crate::session::fs::{FileReader, FsError};

/// envd's filesystem service and its plain-HTTP file transfer (merged beside
/// [`super::envd::router`]).
pub fn router(server: Arc<Server>) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/filesystem.Filesystem/{method}", post(rpc))
        .route(
            "/files",
            get(download)
                .post(upload)
                .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .with_state(server)
}

/// Largest upload accepted (the body is held while it is written in chunks).
pub const MAX_UPLOAD: usize = 256 << 20;

#[derive(serde::Deserialize)]
pub struct FileQuery {
    path: Option<String>,
    username: Option<String>,
}

/// envd's `/files` error: JSON `{code, message}` with the status the SDK maps.
fn http_error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    (status, Json(body)).into_response()
}

fn http_fs_error(e: FsError) -> Response {
    let status = match e.kind() {
        Some(FsErrorKind::NotFound) => StatusCode::NOT_FOUND,
        Some(FsErrorKind::PermissionDenied) => StatusCode::FORBIDDEN,
        Some(FsErrorKind::Exists) => StatusCode::CONFLICT,
        Some(FsErrorKind::NoContainer) | None => StatusCode::BAD_GATEWAY,
        Some(FsErrorKind::Failed) => StatusCode::INTERNAL_SERVER_ERROR,
        Some(_) => StatusCode::BAD_REQUEST,
    };
    http_error(status, e.to_string())
}

/// The user named by the query, else by the Authorization header, else the default.
async fn query_user(sbx: &Sandbox, q: &FileQuery, headers: &HeaderMap) -> Result<String, RpcError> {
    let named = match &q.username {
        Some(u) => u.clone(),
        None => user(headers)?,
    };
    Ok(file_user(sbx, &named).await)
}

/// `GET /files?path=`: the file's bytes, streamed one chunk (one agent request) at a time.
pub async fn download(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> Response {
    let sbx = match sandbox(&s, &headers, true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let Some(path) = q.path.clone().filter(|p| !p.is_empty()) else {
        return http_error(StatusCode::BAD_REQUEST, "no path given");
    };
    let who = match query_user(&sbx, &q, &headers).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let mut reader = FileReader::new(&who, &path);
    // The first chunk before the headers: a missing file is a 404, not a broken body.
    let first = match reader.next(&sbx.vm.session).await {
        Some(Ok(data)) => data,
        Some(Err(e)) => return http_fs_error(e),
        None => Vec::new(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        if tx.send(Ok(Bytes::from(first))).await.is_err() {
            return;
        }
        while let Some(chunk) = reader.next(&sbx.vm.session).await {
            let item = chunk.map(Bytes::from).map_err(std::io::Error::other);
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    let body = Body::from_stream(tokio_stream_of(rx));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        path.rsplit('/').next().unwrap_or("").replace('"', "")
    );
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response()
}

fn tokio_stream_of(
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) })
}

/// `POST /files?path=`: a multipart body (a `file` part per file, named by its filename when
/// no path is given) or the file's bytes as `application/octet-stream`. Answers envd's list of
/// `{name, type, path}` of what was written.
pub async fn upload(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
    body: Bytes,
) -> Response {
    let sbx = match sandbox(&s, &headers, true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let who = match query_user(&sbx, &q, &headers).await {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let files: Vec<(String, &[u8])> = if ctype.starts_with("multipart/form-data") {
        let parts = match super::multipart::parse(ctype, &body) {
            Ok(p) => p,
            Err(why) => return http_error(StatusCode::BAD_REQUEST, why),
        };
        let single = parts.len() == 1;
        let mut files = Vec::new();
        for p in parts {
            let path = match (&q.path, p.filename) {
                (Some(path), _) if single => path.clone(),
                (_, Some(f)) => f,
                _ => return http_error(StatusCode::BAD_REQUEST, "a part names no file"),
            };
            files.push((path, p.data));
        }
        files
    } else {
        match &q.path {
            Some(p) => vec![(p.clone(), &body[..])],
            None => return http_error(StatusCode::BAD_REQUEST, "no path given"),
        }
    };
    let mut written = Vec::new();
    for (path, data) in files {
        match sbx.vm.session.write_file(&who, &path, data).await {
            Ok(e) => written.push(serde_json::json!({
                "name": name_of(&e.path),
                "type": "file",
                "path": e.path,
            })),
            Err(e) => return http_fs_error(e),
        }
    }
    Json(written).into_response()
}

fn name_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or("").to_string()
}

/// envd's EntryInfo of an agent entry.
pub fn entry_info(e: FsEntry) -> EntryInfo {
    let file_type = match e.kind {
        FsKind::File | FsKind::Other => "FILE_TYPE_FILE",
        FsKind::Dir => "FILE_TYPE_DIRECTORY",
        FsKind::Symlink => "FILE_TYPE_SYMLINK",
    };
    let modified = chrono::DateTime::from_timestamp(e.mtime_sec, e.mtime_nsec)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    EntryInfo {
        name: name_of(&e.path),
        file_type,
        path: e.path,
        size: e.size.to_string(),
        mode: e.mode & 0o7777,
        permissions: fspb::permissions(e.mode),
        owner: e.owner,
        group: e.group,
        modified_time: modified,
        mtime: (e.mtime_sec, e.mtime_nsec),
        is_symlink: e.symlink_target.is_some(),
        symlink_target: e.symlink_target,
    }
}

/// The `{entry}` answer of Stat, MakeDir and Move.
fn entry_response(r: FsReply) -> Result<fspb::EntryResponse, RpcError> {
    match r {
        FsReply::Entry(e) => Ok(fspb::EntryResponse {
            entry: entry_info(e),
        }),
        _ => Err(RpcError::new(
            Code::Internal,
            "unexpected answer from the agent",
        )),
    }
}

/// `filesystem.Filesystem/<method>` (unary, JSON codec).
pub async fn rpc(
    State(s): State<Arc<Server>>,
    axum::extract::Path(method): axum::extract::Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let who = match user(&headers) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };
    match method.as_str() {
        "Remove" => {
            unary(
                &s,
                &headers,
                &body,
                |sbx, r: fspb::PathRequest| async move {
                    let who = file_user(&sbx, &who).await;
                    let op = FsOp::Remove { path: r.path };
                    sbx.vm.session.fs(&who, op).await.map_err(rpc_fs_error)?;
                    Ok(fspb::Empty {})
                },
            )
            .await
        }
        "Stat" | "MakeDir" => {
            unary(
                &s,
                &headers,
                &body,
                |sbx, r: fspb::PathRequest| async move {
                    let who = file_user(&sbx, &who).await;
                    let session = &sbx.vm.session;
                    let op = match method.as_str() {
                        "Stat" => FsOp::Stat { path: r.path },
                        _ => FsOp::MakeDir { path: r.path },
                    };
                    entry_response(session.fs(&who, op).await.map_err(rpc_fs_error)?)
                },
            )
            .await
        }
        "Move" => {
            unary(
                &s,
                &headers,
                &body,
                |sbx, r: fspb::MoveRequest| async move {
                    let who = file_user(&sbx, &who).await;
                    let op = FsOp::Move {
                        from: r.source,
                        to: r.destination,
                    };
                    let reply = sbx.vm.session.fs(&who, op).await.map_err(rpc_fs_error)?;
                    entry_response(reply)
                },
            )
            .await
        }
        "ListDir" => {
            unary(
                &s,
                &headers,
                &body,
                |sbx, r: fspb::ListDirRequest| async move {
                    let who = file_user(&sbx, &who).await;
                    let depth = r.depth.max(1);
                    let entries = sbx
                        .vm
                        .session
                        .list_dir(&who, &r.path, depth)
                        .await
                        .map_err(rpc_fs_error)?;
                    let entries: Vec<EntryInfo> = entries.into_iter().map(entry_info).collect();
                    Ok(fspb::ListDirResponse { entries })
                },
            )
            .await
        }
        "WatchDir" => super::watch::watch_dir(&s, &headers, &body).await,
        "CreateWatcher" => super::watch::create_watcher(&s, &headers, &body).await,
        "GetWatcherEvents" => super::watch::get_watcher_events(&s, &headers, &body).await,
        "RemoveWatcher" => super::watch::remove_watcher(&s, &headers, &body).await,
        _ => RpcError::new(Code::Unimplemented, "not supported by fcvm serve").into_response(),
    }
}
