//! What the REST handlers share (`rest.rs`, and `snapshots.rs`/`lifecycle.rs` for pause,
//! resume, fork and snapshot templates): request-body parsing, the timeout rule, new access
//! tokens, a `--max-sandboxes` place held by a create, and the `Sandbox` reply. A leaf under
//! `serve`, so the handler modules never need each other for these.

use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};

use super::sandbox::Sandbox;
use super::{ApiError, Server, CLIENT_ID, DEFAULT_TIMEOUT, ENVD_VERSION, MAX_TIMEOUT};

pub(super) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("Invalid request body: {e}")))
}

pub(super) fn timeout_of(secs: Option<i64>) -> Result<Duration, ApiError> {
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

/// A sandbox's envd access token.
pub(super) fn new_token() -> String {
    hex::encode(rand::random::<[u8; 24]>())
}

/// A place among `--max-sandboxes` held by a create in progress (also when the client goes
/// away and the create is dropped half-way).
pub(super) struct Slot<'a>(&'a Server);

impl<'a> Slot<'a> {
    pub(super) fn take(s: &'a Server) -> Result<Slot<'a>, ApiError> {
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
pub(super) fn created(s: &Sandbox) -> Value {
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

#[derive(Deserialize, Default)]
pub(super) struct ConnectBody {
    pub timeout: Option<i64>,
    /// false: resume a paused sandbox by a cold boot from its disk (not supported).
    pub memory: Option<bool>,
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
}
