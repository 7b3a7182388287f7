//! The E2B REST API subset (`E2B_API_URL`): sandboxes created, listed, described, timed out and
//! killed (pause, resume, fork and snapshots: [`super::snapshots`]). Bodies and errors are E2B's (its OpenAPI document, as the SDK's generated client
//! reads them): errors are `{"code": <http status>, "message": …}`; a bad key is 401, an
//! unknown sandbox or template 404, a bad body 400, and nothing changes on any of them.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::body::{created, new_token, parse_body, timeout_of, ConnectBody, Slot};
use super::sandbox::{CreateParams, Sandbox};
use super::vm::SandboxVm;
use super::{constant_time_eq, ApiError, Server, DEFAULT_TEMPLATE};
use super::{lifecycle, list, snapshots};

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/sandboxes", post(create).get(list::list_v1))
        .route("/v2/sandboxes", post(create).get(list::list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/metrics", get(super::metrics::metrics))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", post(snapshots::pause))
        .route("/sandboxes/{id}/resume", post(snapshots::resume))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/templates/{id}", axum::routing::delete(snapshots::delete))
        .route("/snapshots", get(snapshots::list))
        .layer(middleware::from_fn_with_state(server.clone(), api_key))
        .with_state(server)
}

/// `X-API-Key` must match the configured key (when there is one).
async fn api_key(State(s): State<Arc<Server>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        let given = req
            .headers()
            .get("x-api-key")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !constant_time_eq(given, key.as_bytes()) {
            return ApiError(StatusCode::UNAUTHORIZED, "Invalid API key".into()).into_response();
        }
    }
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateBody {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<i64>,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    env_vars: Option<BTreeMap<String, String>>,
    #[serde(default)]
    auto_pause: Option<bool>,
    /// false: a filesystem-only pause (not supported).
    #[serde(default)]
    auto_pause_memory: Option<bool>,
    #[serde(default)]
    auto_resume: Option<AutoResume>,
}

#[derive(Deserialize)]
struct AutoResume {
    #[serde(default)]
    enabled: bool,
}

async fn create(
    State(s): State<Arc<Server>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: CreateBody = parse_body(&body)?;
    let template_id = b.template_id.unwrap_or_else(|| DEFAULT_TEMPLATE.0.into());
    let auto_pause = b.auto_pause == Some(true);
    if auto_pause && b.auto_pause_memory == Some(false) {
        return Err(ApiError::bad_request(
            "a filesystem-only pause (autoPauseMemory: false) is not supported by fcvm serve",
        ));
    }
    if b.auto_resume.is_some_and(|a| a.enabled) {
        return Err(ApiError::bad_request(
            "autoResume is not supported by fcvm serve: resume with connect",
        ));
    }
    let params = CreateParams {
        metadata: b.metadata.unwrap_or_default(),
        env_vars: b.env_vars.unwrap_or_default(),
        timeout: timeout_of(b.timeout)?,
        // Always, whatever v1's `secure` says: envd calls carry no API key, so without a
        // token anyone who can reach the port and knows the id could run commands.
        access_token: Some(new_token()),
        auto_pause,
    };
    let snapshot = s
        .snapshots
        .lock()
        .expect("snapshots")
        .get(&template_id)
        .cloned();
    if let Some(snap) = snapshot {
        let sbx = lifecycle::clone_of(&s, &snap.frozen, &template_id, params).await?;
        return Ok((StatusCode::CREATED, Json(created(&sbx))).into_response());
    }
    let template = s
        .templates
        .get(&template_id)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("template '{template_id}' not found"),
            )
        })?
        .clone();
    let slot = Slot::take(&s)?;
    let pooled = s.pools.get(&template_id).and_then(|p| p.take());
    let vm = match pooled {
        Some(vm) => vm,
        None => SandboxVm::launch(&s.dirs, &template).await.map_err(|e| {
            tracing::error!("sandbox not created: {e:#}");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
        })?,
    };
    let sbx = Arc::new(Sandbox::new(&template.id, vm, params));
    tracing::info!(sandbox = sbx.id, template = template_id, "sandbox created");
    let body = created(&sbx);
    s.insert(sbx);
    // Counted as running from here on.
    drop(slot);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn detail(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let paused = || s.paused.lock().expect("paused").get(&id).cloned();
    let item = match s.get(&id) {
        Some(sbx) => list::Item::running(&sbx),
        None => {
            let p = paused().ok_or_else(|| ApiError::not_found(&id))?;
            list::Item::paused(&p)
        }
    };
    let mut v = list::listed(&item);
    v["envdAccessToken"] = json!(item.ident.access_token);
    let on_timeout = if item.ident.auto_pause {
        "pause"
    } else {
        "kill"
    };
    v["lifecycle"] = json!({"onTimeout": on_timeout, "autoResume": false});
    v["domain"] = Value::Null;
    Ok(Json(v))
}

async fn kill(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if s.kill(&id) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(&id))
    }
}

#[derive(Deserialize)]
struct TimeoutBody {
    timeout: i64,
}

async fn set_timeout(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let b: TimeoutBody = parse_body(&body)?;
    let t = timeout_of(Some(b.timeout))?;
    let sbx = s.get(&id).ok_or_else(|| ApiError::not_found(&id))?;
    sbx.set_timeout(t);
    Ok(StatusCode::NO_CONTENT)
}

/// Connect to a sandbox: a running one has its timeout extended (never shortened) to
/// `timeout` (200); a paused one is resumed with it (201).
async fn connect(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: ConnectBody = if body.is_empty() {
        ConnectBody::default()
    } else {
        parse_body(&body)?
    };
    let t = timeout_of(b.timeout)?;
    if let Some(sbx) = s.get(&id) {
        if sbx.end_at() < Utc::now() + t {
            sbx.set_timeout(t);
        }
        return Ok((StatusCode::OK, Json(created(&sbx))).into_response());
    }
    snapshots::check_memory(b.memory)?;
    match lifecycle::resume(&s, &id, t).await? {
        Some(sbx) => Ok((StatusCode::CREATED, Json(created(&sbx))).into_response()),
        None => Err(ApiError::not_found(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
