//! The E2B REST API subset (`E2B_API_URL`): sandboxes created, listed, described, timed out and
//! killed. Bodies and errors are E2B's (its OpenAPI document, as the SDK's generated client
//! reads them): errors are `{"code": <http status>, "message": …}`; a bad key is 401, an
//! unknown sandbox or template 404, a bad body 400, and nothing changes on any of them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::sandbox::{CreateParams, Sandbox};
use super::{
    constant_time_eq, Server, DEFAULT_TEMPLATE, DEFAULT_TIMEOUT, ENVD_VERSION, MAX_TIMEOUT,
};

/// The writable disk every sandbox gets (`run::make_rw_disk`), reported as its disk size.
const DISK_MIB: u32 = 1024;
/// Largest page of a list.
const MAX_PAGE: usize = 100;

/// An E2B API error.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, m.into())
    }
    fn not_found(id: &str) -> ApiError {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("sandbox \"{id}\" doesn't exist or you don't have access to it"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.0,
            Json(json!({"code": self.0.as_u16(), "message": self.1})),
        )
            .into_response()
    }
}

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
        .route("/sandboxes", post(create).get(list_v1))
        .route("/v2/sandboxes", post(create).get(list_v2))
        .route("/sandboxes/{id}", get(detail).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
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
    /// v1 only; v2 sandboxes are always secured.
    secure: Option<bool>,
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
    uri: axum::http::Uri,
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
    let secure = uri.path().starts_with("/v2/") || b.secure == Some(true);
    let params = CreateParams {
        metadata: b.metadata.unwrap_or_default(),
        env_vars: b.env_vars.unwrap_or_default(),
        timeout: timeout_of(b.timeout)?,
        access_token: secure.then(|| hex::encode(rand::random::<[u8; 24]>())),
    };
    let slot = Slot::take(&s)?;
    let launched = Sandbox::launch(&s.dirs, &template, params).await;
    let sbx = Arc::new(launched.map_err(|e| {
        tracing::error!("sandbox not created: {e:#}");
        ApiError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    })?);
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

/// E2B names the node a sandbox runs on; this server is the only one.
const CLIENT_ID: &str = "fcvm";

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `ListedSandbox`.
fn listed(s: &Sandbox) -> Value {
    json!({
        "templateID": s.template_id,
        "sandboxID": s.id,
        "clientID": CLIENT_ID,
        "startedAt": time(s.started_at),
        "endAt": time(s.end_at()),
        "cpuCount": s.cpus,
        "memoryMB": s.mem_mib,
        "diskSizeMB": DISK_MIB,
        "metadata": s.metadata,
        "state": "running",
        "envdVersion": ENVD_VERSION,
    })
}

async fn detail(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sbx = s.get(&id).ok_or_else(|| ApiError::not_found(&id))?;
    let mut v = listed(&sbx);
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

async fn list_v1(
    State(s): State<Arc<Server>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (items, _) = select(&s, &q, false)?;
    Ok(Json(items))
}

async fn list_v2(
    State(s): State<Arc<Server>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (items, next) = select(&s, &q, true)?;
    let mut headers = HeaderMap::new();
    if let Some(t) = next {
        headers.insert(
            "x-next-token",
            t.parse().expect("hex and digits are a header value"),
        );
    }
    Ok((headers, Json(items)).into_response())
}

/// The sandboxes a list query selects, ordered by start time (then id), one page of them when
/// `paged`, and the token of the next page.
fn select(
    s: &Server,
    q: &ListQuery,
    paged: bool,
) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let filter = match &q.metadata {
        Some(m) => metadata_filter(m)?,
        None => vec![],
    };
    let running_wanted = match &q.state {
        None => true,
        Some(st) => st.split(',').map(str::trim).any(|x| x == "running"),
    };
    let mut all: Vec<Arc<Sandbox>> = s
        .all()
        .into_iter()
        .filter(|x| running_wanted && filter.iter().all(|(k, v)| x.metadata.get(k) == Some(v)))
        .collect();
    let key = |x: &Sandbox| {
        format!(
            "{:020}-{}",
            x.started_at.timestamp_nanos_opt().unwrap_or(0),
            x.id
        )
    };
    all.sort_by_key(|x| key(x));
    if q.order.as_deref() == Some("desc") {
        all.reverse();
    }
    if !paged {
        return Ok((all.iter().map(|x| listed(x)).collect(), None));
    }
    let desc = q.order.as_deref() == Some("desc");
    if let Some(tok) = &q.next_token {
        all.retain(|x| if desc { key(x) < *tok } else { key(x) > *tok });
    }
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let next = (all.len() > limit).then(|| key(&all[limit - 1]));
    all.truncate(limit);
    Ok((all.iter().map(|x| listed(x)).collect(), next))
}

/// The SDK's metadata filter: `k=v&k2=v2`, each key and value percent-encoded once more.
fn metadata_filter(m: &str) -> Result<Vec<(String, String)>, ApiError> {
    m.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_decode(&percent_decode(&s.replace('+', " ")).ok_or(())?).ok_or(())
            };
            match (dec(k), dec(v)) {
                (Ok(k), Ok(v)) => Ok((k, v)),
                _ => Err(ApiError::bad_request(format!(
                    "Invalid metadata filter {pair:?}"
                ))),
            }
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_filters_decode_twice() {
        // The SDK: urlencode({quote(k): quote(v)}) for {"a b": "x&y", "k": "v"}.
        let f = metadata_filter("a%2520b=x%2526y&k=v").unwrap();
        assert_eq!(
            f,
            vec![("a b".into(), "x&y".into()), ("k".into(), "v".into())]
        );
        assert!(metadata_filter("k=%zz").is_err());
    }

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
