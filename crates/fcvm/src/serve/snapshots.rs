//! The REST calls of pause, resume, fork and snapshots (E2B's bodies and status codes, as the
//! SDK's generated client reads them), over [`super::lifecycle`]:
//!
//! - `POST /sandboxes/{id}/pause` → 204; 409 if it is paused already (the SDK's `False`);
//! - `POST /sandboxes/{id}/resume` → 201 and the `Sandbox`; 409 if it runs;
//! - `POST /sandboxes/{id}/fork` `{timeout, count}` → 201 and one `{sandbox}` or `{error}` per
//!   fork;
//! - `POST /sandboxes/{id}/snapshots` `{name}` → 201 `{snapshotID, names}`; the id is a
//!   `templateID` creates take; `GET /snapshots` lists them; `DELETE /templates/{id}`
//!   removes one (204, 404).
//!
//! Filesystem-only pauses and snapshots (`memory: false`) are refused with 400: every fcvm
//! snapshot holds the VM's memory.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{created, new_token, parse_body, timeout_of};
use super::lifecycle;
use super::sandbox::{CreateParams, SnapshotTemplate};
use super::{ApiError, Server};

/// Forks one call may ask for (E2B's limit).
const MAX_FORKS: i64 = 20;
/// Snapshot templates kept at a time.
const MAX_SNAPSHOTS: usize = 64;

fn body_or_default<T: serde::de::DeserializeOwned + Default>(b: &[u8]) -> Result<T, ApiError> {
    if b.is_empty() {
        Ok(T::default())
    } else {
        parse_body(b)
    }
}

/// `memory: false` asks for a filesystem-only snapshot, which fcvm does not take.
pub(super) fn check_memory(memory: Option<bool>) -> Result<(), ApiError> {
    if memory == Some(false) {
        return Err(ApiError::bad_request(
            "filesystem-only snapshots (memory: false) are not supported by fcvm serve",
        ));
    }
    Ok(())
}

#[derive(Deserialize, Default)]
struct PauseBody {
    memory: Option<bool>,
}

pub(super) async fn pause(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let b: PauseBody = body_or_default(&body)?;
    check_memory(b.memory)?;
    lifecycle::pause(&s, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn resume(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: super::body::ConnectBody = body_or_default(&body)?;
    check_memory(b.memory)?;
    let t = timeout_of(b.timeout)?;
    if s.get(&id).is_some() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("sandbox {id} is already running"),
        ));
    }
    match lifecycle::resume(&s, &id, t).await? {
        Some(sbx) => Ok((StatusCode::CREATED, Json(created(&sbx))).into_response()),
        None => Err(ApiError::not_found(&id)),
    }
}

#[derive(Deserialize, Default)]
struct ForkBody {
    timeout: Option<i64>,
    count: Option<i64>,
}

pub(super) async fn fork(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: ForkBody = body_or_default(&body)?;
    let count = b.count.unwrap_or(1);
    if !(1..=MAX_FORKS).contains(&count) {
        return Err(ApiError::bad_request(format!(
            "count must be between 1 and {MAX_FORKS}"
        )));
    }
    let timeout = timeout_of(b.timeout)?;
    let source = s.get(&id);
    let frozen = lifecycle::snapshot_of(&s, &id).await?;
    let (template_id, metadata, env_vars) = match &source {
        Some(x) => (
            x.template_id.clone(),
            x.metadata.clone(),
            x.env_vars.clone(),
        ),
        None => return Err(ApiError::not_found(&id)),
    };
    let mut results: Vec<Value> = Vec::new();
    for _ in 0..count {
        let params = CreateParams {
            metadata: metadata.clone(),
            env_vars: env_vars.clone(),
            timeout,
            access_token: Some(new_token()),
            auto_pause: false,
        };
        results.push(
            match lifecycle::clone_of(&s, &frozen, &template_id, params).await {
                Ok(sbx) => json!({ "sandbox": created(&sbx) }),
                Err(ApiError(code, message)) => {
                    json!({ "error": { "code": code.as_u16(), "message": message } })
                }
            },
        );
    }
    // The snapshot goes with the last fork (or now, if none started).
    drop(frozen);
    Ok((StatusCode::CREATED, Json(results)).into_response())
}

#[derive(Deserialize, Default)]
struct SnapshotBody {
    name: Option<String>,
    memory: Option<bool>,
}

/// A snapshot name a client gives: a template id, so letters, digits and `._:/-` only.
fn check_name(n: &str) -> Result<(), ApiError> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c));
    if !ok {
        return Err(ApiError::bad_request(format!(
            "invalid snapshot name {n:?}: 1 to 128 letters, digits or ._:/-"
        )));
    }
    Ok(())
}

pub(super) async fn create(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: SnapshotBody = body_or_default(&body)?;
    check_memory(b.memory)?;
    if let Some(n) = &b.name {
        check_name(n)?;
        if s.templates.contains_key(n) {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("{n} names a template of this server"),
            ));
        }
    }
    let frozen = lifecycle::snapshot_of(&s, &id).await?;
    let snapshot_id = b
        .name
        .unwrap_or_else(|| format!("snapshot-{}", hex::encode(rand::random::<[u8; 6]>())));
    {
        let mut all = s.snapshots.lock().expect("snapshots");
        if !all.contains_key(&snapshot_id) && all.len() >= MAX_SNAPSHOTS {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!("at most {MAX_SNAPSHOTS} snapshots are kept: delete one"),
            ));
        }
        // A name given again gets the new snapshot, as E2B assigns a new build to it.
        all.insert(
            snapshot_id.clone(),
            Arc::new(SnapshotTemplate { frozen, source: id }),
        );
    }
    tracing::info!(snapshot = snapshot_id, "snapshot taken");
    let body = json!({ "snapshotID": snapshot_id, "names": [snapshot_id] });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    #[serde(rename = "sandboxID")]
    sandbox_id: Option<String>,
    name: Option<String>,
    limit: Option<usize>,
    next_token: Option<String>,
}

/// `GET /snapshots` (the SDK's `list_snapshots`): `SnapshotInfo` items by id, filtered by the
/// sandbox they were taken of and by id, paged by `limit` and `nextToken` (`x-next-token`).
pub(super) async fn list(
    State(s): State<Arc<Server>>,
    q: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let axum::extract::Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(MAX_SNAPSHOTS).clamp(1, MAX_SNAPSHOTS);
    let all = s.snapshots.lock().expect("snapshots");
    let mut ids: Vec<&String> = all
        .iter()
        .filter(|(id, t)| {
            q.sandbox_id.as_ref().is_none_or(|x| *x == t.source)
                && q.name.as_ref().is_none_or(|n| n == *id)
                && q.next_token.as_ref().is_none_or(|tok| *id > tok)
        })
        .map(|(id, _)| id)
        .collect();
    let next = (ids.len() > limit).then(|| ids[limit - 1].clone());
    ids.truncate(limit);
    let items: Vec<Value> = ids
        .iter()
        .map(|id| json!({ "snapshotID": id, "names": [id] }))
        .collect();
    drop(all);
    let mut headers = axum::http::HeaderMap::new();
    if let Some(t) = next.and_then(|t| t.parse().ok()) {
        headers.insert("x-next-token", t);
    }
    Ok((headers, Json(items)).into_response())
}

/// `DELETE /templates/{id}` of a snapshot (the SDK's `delete_snapshot`).
pub(super) async fn delete(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    match s.snapshots.lock().expect("snapshots").remove(&id) {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("snapshot '{id}' not found"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_checked() {
        assert!(check_name("my-project/snap:v1").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"x".repeat(129)).is_err());
        assert!(check_memory(Some(false)).is_err());
        assert!(check_memory(None).is_ok());
    }
}
