//! `GET /sandboxes/{id}/metrics` (what `sbx.get_metrics()` calls): the VM's CPU, memory and
//! disk use now, as one E2B `SandboxMetric`. Sampled by the agent (`FsOp::Metrics`, protocol 7:
//! /proc/stat over 100 ms, /proc/meminfo, statvfs of the container's root), so the figures are
//! the guest's own. E2B keeps a history and filters it by `start`/`end`; fcvm keeps none and
//! answers the one current sample whatever the range.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::Utc;
use fcvm_proto::{FsOp, FsReply, VmMetrics};
use serde_json::{json, Value};

use super::{ApiError, Server};

/// E2B's `SandboxMetric` of one sample.
pub fn metric(m: &VmMetrics, at: chrono::DateTime<Utc>) -> Value {
    json!({
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "timestampUnix": at.timestamp(),
        "cpuCount": m.cpu_count,
        "cpuUsedPct": m.cpu_used_pct,
        "memUsed": m.mem_used,
        "memTotal": m.mem_total,
        "memCache": m.mem_cache,
        "diskUsed": m.disk_used,
        "diskTotal": m.disk_total,
    })
}

/// The route's handler (behind the REST API's key check).
pub async fn metrics(
    State(s): State<Arc<Server>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let sbx = s.get(&id).ok_or_else(|| ApiError::not_found(&id))?;
    match sbx.vm.session.fs("", FsOp::Metrics).await {
        Ok(FsReply::Metrics(m)) => Ok(Json(json!([metric(&m, Utc::now())]))),
        Ok(_) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "unexpected answer from the agent".into(),
        )),
        Err(e) => Err(ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("metrics of {id}: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_e2bs_sandbox_metric() {
        let m = VmMetrics {
            cpu_count: 1,
            cpu_used_pct: 12.5,
            mem_total: 512 << 20,
            mem_used: 100 << 20,
            mem_cache: 5,
            disk_total: 1 << 30,
            disk_used: 1 << 20,
        };
        let at = chrono::DateTime::from_timestamp(1_704_067_200, 0).unwrap();
        let v = metric(&m, at);
        assert_eq!(v["timestamp"], "2024-01-01T00:00:00Z");
        assert_eq!(v["timestampUnix"], 1_704_067_200);
        assert_eq!(
            (v["cpuCount"].as_u64(), v["cpuUsedPct"].as_f64()),
            (Some(1), Some(12.5))
        );
        assert_eq!(v["memTotal"], 512u64 << 20);
        assert_eq!(v["diskUsed"], 1u64 << 20);
    }
}
