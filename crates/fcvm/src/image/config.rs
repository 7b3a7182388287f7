//! The image config blob → our [`ImageConfig`] plus the layers' diff_ids.
//!
//! oci-spec models the OCI fields (Entrypoint, Cmd, Env, …, rootfs.diff_ids). Docker's
//! `Healthcheck` is not in the OCI spec, so it is read from the raw JSON; its durations are
//! nanoseconds, and zero means "Docker's default".

use std::time::Duration;

use oci_spec::image::ImageConfiguration;

use super::member::json_problem;
use super::{HealthCheck, ImageConfig, ImageError};

const DEFAULT_INTERVAL: u64 = 30;
const DEFAULT_TIMEOUT: u64 = 30;
const DEFAULT_RETRIES: u32 = 3;

/// Returns the config and the ordered diff_ids of its layers.
pub(crate) fn parse(raw: &[u8], image: &str) -> Result<(ImageConfig, Vec<String>), ImageError> {
    let invalid = |reason: String| ImageError::InvalidImage {
        image: image.to_string(),
        reason,
    };
    let mut value: serde_json::Value = serde_json::from_slice(raw)
        .map_err(|e| invalid(format!("bad config: {}", json_problem(&e))))?;
    // oci-spec 0.7 insists on `history`, which the spec makes optional (and minimal images omit).
    if let Some(obj) = value.as_object_mut() {
        obj.entry("history")
            .or_insert_with(|| serde_json::json!([]));
    }
    let oci: ImageConfiguration = serde_json::from_value(value.clone())
        .map_err(|e| invalid(format!("bad config: {}", json_problem(&e))))?;
    let diff_ids = oci.rootfs().diff_ids().clone();
    let mut out = ImageConfig::default();
    if let Some(c) = oci.config() {
        out.entrypoint = c.entrypoint().clone().unwrap_or_default();
        out.cmd = c.cmd().clone().unwrap_or_default();
        out.env = c.env().clone().unwrap_or_default();
        out.workdir = c.working_dir().clone().unwrap_or_default();
        out.user = c.user().clone().unwrap_or_default();
        out.exposed_ports = c.exposed_ports().clone().unwrap_or_default();
        out.exposed_ports.sort();
        out.labels = c.labels().clone().unwrap_or_default().into_iter().collect();
    }
    out.healthcheck = value
        .get("config")
        .and_then(|c| c.get("Healthcheck"))
        .and_then(healthcheck);
    Ok((out, diff_ids))
}

fn healthcheck(h: &serde_json::Value) -> Option<HealthCheck> {
    let test: Vec<String> = h
        .get("Test")?
        .as_array()?
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    // ["NONE"] disables a check inherited from a base image; an empty test inherits nothing.
    if test.is_empty() || test[0] == "NONE" {
        return None;
    }
    let secs = |key: &str, default: u64| match h.get(key).and_then(|v| v.as_u64()).unwrap_or(0) {
        0 => default,
        ns => Duration::from_nanos(ns).as_secs().max(1),
    };
    Some(HealthCheck {
        test,
        interval_s: secs("Interval", DEFAULT_INTERVAL),
        timeout_s: secs("Timeout", DEFAULT_TIMEOUT),
        retries: match h.get("Retries").and_then(|v| v.as_u64()).unwrap_or(0) {
            0 => DEFAULT_RETRIES,
            n => n.min(u32::MAX as u64) as u32,
        },
        start_period_s: h
            .get("StartPeriod")
            .and_then(|v| v.as_u64())
            .map(|ns| Duration::from_nanos(ns).as_secs())
            .unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_with_healthcheck() {
        let raw = br#"{
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/docker-entrypoint.sh"], "Cmd": ["nginx", "-g", "daemon off;"],
                "Env": ["PATH=/usr/bin"], "WorkingDir": "/srv", "User": "101:101",
                "ExposedPorts": {"80/tcp": {}, "443/tcp": {}},
                "Labels": {"maintainer": "x"},
                "Healthcheck": {"Test": ["CMD-SHELL", "curl -f localhost"],
                                "Interval": 5000000000, "Retries": 0, "StartPeriod": 2000000000}
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:aa", "sha256:bb"]}
        }"#;
        let (c, ids) = parse(raw, "t").unwrap();
        assert_eq!(ids, vec!["sha256:aa", "sha256:bb"]);
        assert_eq!(c.entrypoint, vec!["/docker-entrypoint.sh"]);
        assert_eq!(c.cmd, vec!["nginx", "-g", "daemon off;"]);
        assert_eq!(c.workdir, "/srv");
        assert_eq!(c.user, "101:101");
        assert_eq!(c.exposed_ports, vec!["443/tcp", "80/tcp"]);
        assert_eq!(c.labels.get("maintainer").map(String::as_str), Some("x"));
        let h = c.healthcheck.unwrap();
        assert_eq!((h.interval_s, h.timeout_s, h.retries), (5, 30, 3));
        assert_eq!(h.start_period_s, 2);
    }

    #[test]
    fn none_healthcheck_and_bad_json() {
        let raw = br#"{"architecture":"amd64","os":"linux",
            "config":{"Healthcheck":{"Test":["NONE"]}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        assert_eq!(parse(raw, "t").unwrap().0, ImageConfig::default());
        assert!(matches!(
            parse(b"{", "t"),
            Err(ImageError::InvalidImage { .. })
        ));
    }
}
