//! The E2B REST API subset (`E2B_API_URL`): sandboxes created, listed, described, timed out and
//! killed. Bodies and errors are E2B's (its OpenAPI document, as the SDK's generated client
//! reads them): errors are `{"code": <http status>, "message": …}`; a bad key is 401, an
//! unknown sandbox or template 404, a bad body 400, and nothing changes on any of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use super::list;
use super::sandbox::{CreateParams, Sandbox};
use super::vm::SandboxVm;
use super::{
    constant_time_eq, ApiError, Server, CLIENT_ID, DEFAULT_TEMPLATE, DEFAULT_TIMEOUT, ENVD_VERSION,
    MAX_TIMEOUT,
};

pub fn router(server: Arc<Server>) -> Router {
    let unsupported = || {
        post(|| async {
            ApiError(
                StatusCode::NOT_IMPLEMENTED,
                "not supported by fcvm serve yet".into(),
            )
        })
    };
    Router::new()
        .route("/sandboxes", post(create).get(list::list_v1))
        .route("/v2/sandboxes", post(create).get(list::list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/metrics", get(super::metrics::metrics))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/sandboxes/{id}/pause", unsupported())
        .route("/sandboxes/{id}/resume", unsupported())
        .route("/sandboxes/{id}/snapshots", unsupported())
        .route("/sandboxes/{id}/fork", unsupported())
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
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

fn timeout_of(secs: Option<i64>) -> Result<Duration, ApiError> {
    match secs {
        None => Ok(DEFAULT_TIMEOUT),
        Some(s) if s < 0 => Err(ApiError::bad_request("timeout must not be negative")),
        Some(s) if s as u64 > MAX_TIMEOUT.as_secs() => Err(ApiError::bad_request(format!(
            "timeout {s} s exceeds the maximum of {} s",
            MAX_TIMEOUT.as_secs()
        ))),
        Some(s) => Ok(Duration::from_secs(s as u64)),
    }
}

async fn create(
    State(s): State<Arc<Server>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let b: CreateBody = parse_body(&body)?;
    let template_id = b.template_id.unwrap_or_else(|| DEFAULT_TEMPLATE.0.into());
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
    if b.auto_pause == Some(true) {
        return Err(ApiError::bad_request(
            "autoPause is not supported by fcvm serve yet",
        ));
    }
    let params = CreateParams {
        metadata: b.metadata.unwrap_or_default(),
        env_vars: b.env_vars.unwrap_or_default(),
        timeout: timeout_of(b.timeout)?,
        // Always, whatever v1's `secure` says: envd calls carry no API key, so without a
        // token anyone who can reach the port and knows the id could run commands.
        access_token: Some(hex::encode(rand::random::<[u8; 24]>())),
    };
    let slot = Slot::take(&s)?;
    let pooled = s.pools.get(&template_id).and_then(|p| p.take());
    let vm = match pooled {
        Some(vm) => vm,
        None => SandboxVm::launch(&s.dirs, &template).await.map_err(|e| {
            tracing::error!("sandbox not created: {e:#}");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
        })?,
    };
    let sbx = Arc::new(Sandbox::new(&template, vm, params));
    tracing::info!(sandbox = sbx.id, template = template_id, "sandbox created");
    let body = created(&sbx);
    s.insert(sbx);
    // Counted as running from here on.
    drop(slot);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A place among `--max-sandboxes` held by a create in progress (also when the client goes
/// away and the create is dropped half-way).
struct Slot<'a>(&'a Server);

impl<'a> Slot<'a> {
    fn take(s: &'a Server) -> Result<Slot<'a>, ApiError> {
        let mut creating = s.creating.lock().expect("creating");
        if s.sandboxes.lock().expect("sandboxes").len() + *creating >= s.max_sandboxes {
            return Err(ApiError(
                StatusCode::TOO_MANY_REQUESTS,
                format!("at most {} sandboxes may run at a time", s.max_sandboxes),
            ));
        }
        *creating += 1;
        Ok(Slot(s))
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        *self.0.creating.lock().expect("creating") -= 1;
    }
}

/// The `Sandbox` reply of create and connect.
fn created(s: &Sandbox) -> Value {
    json!({
        "templateID": s.template_id,
        "sandboxID": s.id,
        "clientID": CLIENT_ID,
        "envdVersion": ENVD_VERSION,
        "envdAccessToken": s.access_token,
        "trafficAccessToken": null,
        "domain": null,
    })
}

async fn detail(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sbx = s.get(&id).ok_or_else(|| ApiError::not_found(&id))?;
    let mut v = list::listed(&sbx);
    v["envdAccessToken"] = json!(sbx.access_token);
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

#[derive(Deserialize, Default)]
struct ConnectBody {
    timeout: Option<i64>,
}

/// Connect to a running sandbox: its timeout is extended (never shortened) to `timeout`.
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
    let sbx = s.get(&id).ok_or_else(|| ApiError::not_found(&id))?;
    if sbx.end_at() < Utc::now() + t {
        sbx.set_timeout(t);
    }
    Ok((StatusCode::OK, Json(created(&sbx))).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_checked() {
        assert_eq!(timeout_of(None).unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(timeout_of(Some(5)).unwrap(), Duration::from_secs(5));
        assert!(timeout_of(Some(-1)).is_err());
        assert!(timeout_of(Some(86_401)).is_err());
    }

    #[test]
    fn keys_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
