//! envd on the host (`E2B_SANDBOX_URL`): `GET /health` and the `process.Process` Connect
//! service, for the sandbox the request names; the file calls are [`super::files`]'s.
//!
//! A request names its sandbox in the `E2b-Sandbox-Id` header (the SDK's custom-URL mode), or
//! in its Host as `49983-<sandboxID>.<domain>` (a wildcard DNS and proxy in front). A sandbox
//! with an access token answers only requests carrying it in `X-Access-Token`. An unknown
//! sandbox is E2B's proxy answer: 502 with "The sandbox … was not found", which the SDK reads
//! as "not running".

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use fcvm_proto::ProcessSpec;

use super::connect::{self, Code, Codec, Reply, RpcError, Wire};
use super::pb;
use super::process::Attached;
use super::sandbox::Sandbox;
use super::Server;

/// envd's port: the one the SDK names in `E2b-Sandbox-Port` and in proxied host names.
const ENVD_PORT: &str = "49983";

pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/process.Process/Start", post(start))
        .route("/process.Process/Connect", post(connect_process))
        .route("/process.Process/List", post(list))
        .route("/process.Process/SendSignal", post(send_signal))
        .route("/process.Process/SendInput", post(send_input))
        .route("/process.Process/CloseStdin", post(close_stdin))
        .route("/process.Process/Update", post(update))
        .route("/process.Process/StreamInput", post(stream_input))
        .with_state(server)
}

/// Why a request reaches no sandbox.
pub(super) enum Refused {
    /// What E2B's proxy in front of envd answers: plain JSON with a numeric code.
    Proxy(StatusCode, String),
    Rpc(RpcError),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Proxy(status, message) => (
                status,
                Json(serde_json::json!({"code": status.as_u16(), "message": message})),
            )
                .into_response(),
            Refused::Rpc(e) => e.into_response(),
        }
    }
}

/// The sandbox a request is for.
pub(super) fn sandbox(
    s: &Server,
    headers: &HeaderMap,
    check_token: bool,
) -> Result<Arc<Sandbox>, Refused> {
    let by_header = headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let by_host = || {
        let host = headers.get(header::HOST)?.to_str().ok()?;
        let first = host.split('.').next()?;
        let (port, id) = first.split_once('-')?;
        (port == ENVD_PORT).then(|| id.to_string())
    };
    let Some(id) = by_header.or_else(by_host) else {
        return Err(Refused::Proxy(
            StatusCode::BAD_REQUEST,
            "no sandbox named: set the E2b-Sandbox-Id header".into(),
        ));
    };
    let Some(sbx) = s.get(&id) else {
        return Err(Refused::Proxy(
            StatusCode::BAD_GATEWAY,
            format!("The sandbox {id} was not found"),
        ));
    };
    if let (true, Some(token)) = (check_token, &sbx.access_token) {
        let given = headers
            .get("x-access-token")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if !super::constant_time_eq(given, token.as_bytes()) {
            return Err(Refused::Rpc(RpcError::new(
                Code::Unauthenticated,
                "invalid or missing X-Access-Token",
            )));
        }
    }
    Ok(sbx)
}

async fn health(State(s): State<Arc<Server>>, headers: HeaderMap) -> Response {
    match sandbox(&s, &headers, false) {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(r) => r.into_response(),
    }
}

/// The user a request names: `Authorization: Basic base64("<user>:")`, else none (empty; see
/// [`super::defaults`] for what that means).
pub(super) fn user(headers: &HeaderMap) -> Result<String, RpcError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(String::new());
    };
    let bad = || RpcError::new(Code::InvalidArgument, "bad Authorization header");
    let v = v.to_str().map_err(|_| bad())?;
    let b64 = v.strip_prefix("Basic ").ok_or_else(bad)?;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    Ok(text.split(':').next().unwrap_or("").to_string())
}

async fn start(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    let codec = match connect::check_codec(&headers, true) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let sbx = match sandbox(&s, &headers, true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let started = async {
        let req: pb::StartRequest = connect::single_message(codec, &body)?;
        let config = req
            .process
            .ok_or_else(|| RpcError::new(Code::InvalidArgument, "no process given"))?;
        if config.cmd.is_empty() {
            return Err(RpcError::new(Code::InvalidArgument, "no command given"));
        }
        let size = req.pty.as_ref().map(|p| p.size.unwrap_or_default());
        let accounts = super::defaults::accounts(&sbx).await;
        let who = accounts.user(&user(&headers)?);
        let spec = ProcessSpec {
            args: std::iter::once(config.cmd.clone())
                .chain(config.args.iter().cloned())
                .collect(),
            env: sbx.exec_env(&config.envs),
            cwd: config
                .cwd
                .clone()
                .or_else(|| accounts.cwd(&who))
                .unwrap_or_default(),
            user: who,
            tty: size.is_some(),
            // envd's default for a request that does not say (older SDKs) is an open stdin.
            stdin: req.stdin.unwrap_or(true) || size.is_some(),
            rows: size.map_or(24, |s| s.rows.clamp(1, u16::MAX as u32) as u16),
            cols: size.map_or(80, |s| s.cols.clamp(1, u16::MAX as u32) as u16),
            ..Default::default()
        };
        sbx.processes
            .start(&sbx.vm.session, spec, req.tag, config)
            .await
    };
    event_stream(codec, started.await, keepalive(&headers))
}

async fn connect_process(
    State(s): State<Arc<Server>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let codec = match connect::check_codec(&headers, true) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let sbx = match sandbox(&s, &headers, true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let attached = async {
        let req: pb::SelectorRequest = connect::single_message(codec, &body)?;
        sbx.processes.connect(req.process.as_ref()).await
    };
    event_stream(codec, attached.await, keepalive(&headers))
}

/// A client stream of stdin (or PTY input) for one process: a `start` naming it, then `data`.
/// The reply — one empty message and the end of the stream — comes once the body ended.
async fn stream_input(State(s): State<Arc<Server>>, headers: HeaderMap, body: Body) -> Response {
    let codec = match connect::check_codec(&headers, true) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let sbx = match sandbox(&s, &headers, true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    match feed_input(codec, &sbx, body).await {
        Ok(()) => {
            let mut b = connect::stream_message(codec, &pb::Empty {});
            b.extend(connect::end_stream(None));
            connect::stream_response(codec, b)
        }
        Err(e) => connect::stream_response(codec, connect::end_stream(Some(&e))),
    }
}

async fn feed_input(codec: Codec, sbx: &Sandbox, body: Body) -> Result<(), RpcError> {
    use futures_util::StreamExt;
    let mut pieces = body.into_data_stream();
    let mut reader = connect::Reader::default();
    let mut target: Option<pb::ProcessSelector> = None;
    loop {
        while let Some(msg) = reader.take() {
            let req: pb::StreamInputRequest = connect::decode(codec, &msg?)?;
            if let Some(start) = req.start {
                target = Some(start.process.unwrap_or_default());
            } else if let Some(data) = req.data {
                let sel = target.as_ref().ok_or_else(|| {
                    RpcError::new(Code::InvalidArgument, "input before the start event")
                })?;
                let input = data.input.unwrap_or_default();
                let bytes = input.stdin.or(input.pty).unwrap_or_default().0;
                sbx.processes.send_input(Some(sel), bytes).await?;
            }
        }
        match pieces.next().await {
            Some(Ok(piece)) => reader.feed(&piece),
            Some(Err(e)) => {
                return Err(RpcError::new(Code::Canceled, format!("request body: {e}")))
            }
            None if reader.is_empty() => return Ok(()),
            None => {
                return Err(RpcError::new(
                    Code::InvalidArgument,
                    "malformed envelope: truncated message",
                ))
            }
        }
    }
}

/// The `Keepalive-Ping-Interval` the client asked for (seconds).
pub(super) fn keepalive(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get("keepalive-ping-interval")?
        .to_str()
        .ok()?
        .parse()
        .ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// A server stream of process events: each as an envelope, keepalives while idle, and the
/// end-of-stream message after the process's end (or with the error that prevented it).
fn event_stream(
    codec: Codec,
    attached: Result<Attached, RpcError>,
    keepalive: Option<Duration>,
) -> Response {
    let Attached { mut events, .. } = match attached {
        Ok(a) => a,
        Err(e) => return connect::stream_response(codec, connect::end_stream(Some(&e))),
    };
    let period = keepalive.unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let stream = async_stream(move |tx| async move {
        loop {
            let chunk = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => {
                        let last = matches!(ev, pb::Event::End(_));
                        let mut b = connect::stream_message(codec, &pb::EventResponse { event: &ev });
                        if last {
                            b.extend(connect::end_stream(None));
                        }
                        if tx.send(b).await.is_err() || last {
                            return;
                        }
                        continue;
                    }
                    None => connect::end_stream(Some(&RpcError::new(Code::Unavailable, "the process's stream ended"))),
                },
                _ = tick.tick(), if keepalive.is_some() => connect::stream_message(codec, &pb::EventResponse { event: &pb::Event::Keepalive {} }),
            };
            let end = chunk.first() == Some(&connect::FLAG_END);
            if tx.send(chunk).await.is_err() || end {
                return;
            }
        }
    });
    connect::stream_response(codec, stream)
}

/// A response body fed by a task: `produce` gets the sending end of a small bounded queue;
/// the body ends when the task does. A client that goes away drops the body, which ends the
/// task's sends (the process itself runs on: see `super::process`).
pub(super) fn async_stream<F, Fut>(produce: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Vec<u8>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    tokio::spawn(produce(tx));
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Bytes::from(b)), rx))
    }))
}

/// Runs a unary call: codec checked, sandbox found, request decoded, `f`'s reply encoded in
/// the request's codec.
pub(super) async fn unary<Req, Rep, F, Fut>(
    s: &Server,
    headers: &HeaderMap,
    body: &[u8],
    f: F,
) -> Response
where
    Req: Wire,
    Rep: Reply,
    F: FnOnce(Arc<Sandbox>, Req) -> Fut,
    Fut: std::future::Future<Output = Result<Rep, RpcError>>,
{
    let codec = match connect::check_codec(headers, false) {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let sbx = match sandbox(s, headers, true) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let req = match connect::decode::<Req>(codec, body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match f(sbx, req).await {
        Ok(reply) => connect::unary_ok(codec, &reply),
        Err(e) => e.into_response(),
    }
}

fn empty() -> pb::Empty {
    pb::Empty {}
}

async fn list(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(&s, &headers, &body, |sbx, _: pb::Empty| async move {
        Ok(pb::ListResponse {
            processes: sbx.processes.list(),
        })
    })
    .await
}

async fn send_signal(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(
        &s,
        &headers,
        &body,
        |sbx, r: pb::SendSignalRequest| async move {
            sbx.processes
                .signal(r.process.as_ref(), r.signal.0)
                .await
                .map(|_| empty())
        },
    )
    .await
}

async fn send_input(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(
        &s,
        &headers,
        &body,
        |sbx, r: pb::SendInputRequest| async move {
            let input = r.input.unwrap_or_default();
            let data = input.stdin.or(input.pty).unwrap_or_default().0;
            sbx.processes
                .send_input(r.process.as_ref(), data)
                .await
                .map(|_| empty())
        },
    )
    .await
}

async fn close_stdin(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(
        &s,
        &headers,
        &body,
        |sbx, r: pb::SelectorRequest| async move {
            sbx.processes
                .close_stdin(r.process.as_ref())
                .await
                .map(|_| empty())
        },
    )
    .await
}

async fn update(State(s): State<Arc<Server>>, headers: HeaderMap, body: Bytes) -> Response {
    unary(
        &s,
        &headers,
        &body,
        |sbx, r: pb::UpdateRequest| async move {
            if let Some(size) = r.pty.and_then(|p| p.size) {
                let (rows, cols) = (
                    size.rows.clamp(1, u16::MAX as u32) as u16,
                    size.cols.clamp(1, u16::MAX as u32) as u16,
                );
                sbx.processes.resize(r.process.as_ref(), rows, cols).await?;
            }
            Ok(empty())
        },
    )
    .await
}
