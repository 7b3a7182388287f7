//! Listing sandboxes (`GET /sandboxes`, `GET /v2/sandboxes`): E2B's `ListedSandbox` items,
//! running and paused, filtered by metadata and state, ordered by start time, paged by `limit` and `nextToken`
//! (the next page's token in the `x-next-token` header, v2 only).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::sandbox::{Identity, Paused, Sandbox};
use super::{ApiError, Server, CLIENT_ID, ENVD_VERSION};

/// The writable disk every sandbox gets (`run::make_rw_disk`), reported as its disk size.
const DISK_MIB: u32 = 1024;
/// Largest page of a list.
const MAX_PAGE: usize = 100;

pub(super) fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// One sandbox as a list shows it: running (with its end) or paused (with when it paused).
pub(super) struct Item {
    pub ident: Arc<Identity>,
    pub end_at: DateTime<Utc>,
    pub paused: bool,
}

impl Item {
    pub fn running(s: &Sandbox) -> Item {
        Item {
            ident: s.ident.clone(),
            end_at: s.end_at(),
            paused: false,
        }
    }

    pub fn paused(p: &Paused) -> Item {
        Item {
            ident: p.ident.clone(),
            end_at: p.paused_at,
            paused: true,
        }
    }

    fn state(&self) -> &'static str {
        if self.paused {
            "paused"
        } else {
            "running"
        }
    }
}

/// `ListedSandbox`.
pub(super) fn listed(x: &Item) -> Value {
    let s = &x.ident;
    json!({
        "templateID": s.template_id,
        "sandboxID": s.id,
        "clientID": CLIENT_ID,
        "startedAt": time(s.started_at),
        "endAt": time(x.end_at),
        "cpuCount": s.cpus,
        "memoryMB": s.mem_mib,
        "diskSizeMB": DISK_MIB,
        "metadata": s.metadata,
        "state": x.state(),
        "envdVersion": ENVD_VERSION,
    })
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListQuery {
    metadata: Option<String>,
    state: Option<String>,
    next_token: Option<String>,
    limit: Option<usize>,
    order: Option<String>,
}

pub(super) async fn list_v1(
    State(s): State<Arc<Server>>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let (items, _) = select(&s, &q, false)?;
    Ok(Json(items))
}

pub(super) async fn list_v2(
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
    let wanted = |state: &str| match &q.state {
        None => true,
        Some(st) => st.split(',').map(str::trim).any(|x| x == state),
    };
    let mut all: Vec<Item> = s
        .all()
        .iter()
        .map(|x| Item::running(x))
        .chain(s.all_paused().iter().map(|p| Item::paused(p)))
        .filter(|x| {
            wanted(x.state())
                && filter
                    .iter()
                    .all(|(k, v)| x.ident.metadata.get(k) == Some(v))
        })
        .collect();
    let key = |x: &Item| {
        format!(
            "{:020}-{}",
            x.ident.started_at.timestamp_nanos_opt().unwrap_or(0),
            x.ident.id
        )
    };
    all.sort_by_key(|x| key(x));
    if q.order.as_deref() == Some("desc") {
        all.reverse();
    }
    if !paged {
        return Ok((all.iter().map(listed).collect(), None));
    }
    let desc = q.order.as_deref() == Some("desc");
    if let Some(tok) = &q.next_token {
        all.retain(|x| if desc { key(x) < *tok } else { key(x) > *tok });
    }
    let limit = q.limit.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let next = (all.len() > limit).then(|| key(&all[limit - 1]));
    all.truncate(limit);
    Ok((all.iter().map(listed).collect(), next))
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
}
