//! Health monitor (host side): `starting` → `healthy` / `unhealthy`, reported through a
//! callback that records it in state.json (`fcvm ls` shows it).
//!
//! 1. The check, first that applies: `--health-check URL` (an HTTP GET made by the agent inside
//!    the VM; 2xx = pass), `--health-cmd CMD` (`/bin/sh -c CMD`, or a JSON array as in podman),
//!    the image's HEALTHCHECK (`CMD …` / `CMD-SHELL …`); the commands run as a container exec
//!    and pass on exit 0. `--health-cmd none` disables the image's check. With no check there is
//!    no monitor and no health at all (as in podman).
//! 2. Timing: `--health-interval/-timeout/-retries/-start-period` override the image's values,
//!    which override podman's defaults (30 s, 30 s, 3, 0).
//! 3. [`state::HealthState`] turns results into states and paces probes: fast while starting,
//!    the interval after (see there). A probe that does not finish within the timeout fails
//!    (an exec is killed: dropping its stream closes it in the guest).
//! 4. The monitor is started once the container runs and stops when [`Monitor`] is dropped.

pub mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fcvm_proto::{Msg, ProcessSpec, Target};

use crate::image::ImageConfig;
use crate::session::{Session, SessionError};
use crate::vm::Health;

pub use state::HealthState;

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_RETRIES: u32 = 3;

/// The `--health-*` flags of `fcvm podman run` (None = not given).
#[derive(Debug, Clone, Default)]
pub struct HealthFlags {
    pub check_url: Option<String>,
    pub cmd: Option<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
}

impl HealthFlags {
    /// Checks every flag before anything is created; the error is one line naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(url) = &self.check_url {
            check_url(url).map_err(|why| format!("Invalid --health-check {url:?}: {why}"))?;
            if self.cmd.is_some() {
                return Err("--health-check and --health-cmd cannot be used together".into());
            }
        }
        if let Some(cmd) = &self.cmd {
            parse_cmd(cmd).map_err(|why| format!("Invalid --health-cmd {cmd:?}: {why}"))?;
        }
        for (flag, d) in [
            ("--health-interval", self.interval),
            ("--health-timeout", self.timeout),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                return Err(format!("{flag} must be greater than 0"));
            }
        }
        if self.retries == Some(0) {
            return Err("--health-retries must be at least 1".into());
        }
        Ok(())
    }
}

/// A duration as podman (Go) writes it: "30s", "1m", "500ms", "1h30m", "1.5s", "0".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (expected e.g. 30s, 1m, 500ms)");
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut rest = t;
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let value: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = tail;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// `http://host[:port][/path]`: the only form the agent probes.
fn check_url(url: &str) -> Result<(), &'static str> {
    let rest = url
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])
        .ok_or("only http:// URLs are supported (the GET is made inside the VM)")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => return Err("unterminated [IPv6] host"),
        },
        None => match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() {
        return Err("no host");
    }
    match port {
        Some(p) if !p.is_empty() && !p.parse::<u16>().is_ok_and(|p| p > 0) => Err("bad port"),
        _ => Ok(()),
    }
}

/// `--health-cmd`: "none", a JSON array (docker's Test form or plain argv), or a shell command.
/// `Ok(None)` = checks disabled.
fn parse_cmd(cmd: &str) -> Result<Option<Vec<String>>, String> {
    let t = cmd.trim();
    if t.is_empty() {
        return Err("empty command".into());
    }
    if t.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    if t.starts_with('[') {
        let v: Vec<String> =
            serde_json::from_str(t).map_err(|e| format!("not a JSON array of strings: {e}"))?;
        return test_args(&v)
            .ok_or_else(|| "empty command".into())
            .map(Some);
    }
    Ok(Some(shell(t)))
}

fn shell(cmd: &str) -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into(), cmd.into()]
}

/// Docker's Test form → argv: ["CMD", args…], ["CMD-SHELL", cmd], or plain args.
fn test_args(test: &[String]) -> Option<Vec<String>> {
    let args = match test.first().map(String::as_str) {
        Some("CMD") => test[1..].to_vec(),
        Some("CMD-SHELL") => shell(&test[1..].join(" ")),
        Some("NONE") => return None,
        _ => test.to_vec(),
    };
    match args.first() {
        Some(a) if !a.trim().is_empty() => Some(args),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Check {
    Http(String),
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq)]
struct Plan {
    check: Check,
    interval: Duration,
    timeout: Duration,
    retries: u32,
    start_period: Duration,
}

/// Which check runs and how often; None = no health monitoring.
fn plan(flags: &HealthFlags, image: &ImageConfig) -> Option<Plan> {
    let img = image.healthcheck.as_ref();
    let check = match (&flags.check_url, &flags.cmd) {
        (Some(url), _) => Check::Http(url.clone()),
        (None, Some(cmd)) => Check::Exec(parse_cmd(cmd).ok()??),
        (None, None) => Check::Exec(test_args(&img?.test)?),
    };
    let secs = |f: fn(&crate::image::HealthCheck) -> u64| {
        img.map(f).filter(|s| *s > 0).map(Duration::from_secs)
    };
    Some(Plan {
        check,
        interval: flags
            .interval
            .or_else(|| secs(|h| h.interval_s))
            .unwrap_or(DEFAULT_INTERVAL),
        timeout: flags
            .timeout
            .or_else(|| secs(|h| h.timeout_s))
            .unwrap_or(DEFAULT_TIMEOUT),
        retries: flags
            .retries
            .or_else(|| img.map(|h| h.retries).filter(|r| *r > 0))
            .unwrap_or(DEFAULT_RETRIES),
        start_period: flags
            .start_period
            .or_else(|| secs(|h| h.start_period_s))
            .unwrap_or(Duration::ZERO),
    })
}

/// Runs until dropped; reports every change of health through the callback.
pub struct Monitor {
    _task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        if let Some(t) = &self._task {
            t.abort();
        }
    }
}

/// Starts monitoring the running container: reports `starting` at once, then every change.
/// Without a check (no flag, no image HEALTHCHECK, or `--health-cmd none`) nothing runs and
/// nothing is reported.
pub fn spawn(
    session: Arc<Session>,
    flags: &HealthFlags,
    image: &ImageConfig,
    on_change: Box<dyn Fn(Health) + Send + Sync>,
) -> Monitor {
    let Some(plan) = plan(flags, image) else {
        return Monitor { _task: None };
    };
    tracing::info!(?plan, "health monitor");
    on_change(Health::Starting);
    let spec = exec_spec(image);
    let task = tokio::spawn(async move {
        let t0 = Instant::now();
        let mut st = HealthState::new(plan.retries, plan.interval, plan.start_period);
        loop {
            let result = probe(&session, &plan, &spec).await;
            if let Err(e) = &result {
                tracing::debug!(error = e as &dyn std::error::Error, "health probe failed");
            }
            if let Some(h) = st.record(result.is_ok(), t0.elapsed()) {
                tracing::info!("health: {h:?}");
                on_change(h);
            }
            tokio::time::sleep(st.next_delay()).await;
        }
    });
    Monitor { _task: Some(task) }
}

/// The process a command check runs as: the image's environment, user and workdir.
fn exec_spec(image: &ImageConfig) -> ProcessSpec {
    let mut env = image.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", fcvm_proto::DEFAULT_PATH));
    }
    ProcessSpec {
        env,
        cwd: if image.workdir.is_empty() {
            "/".into()
        } else {
            image.workdir.clone()
        },
        user: image.user.clone(),
        ..Default::default()
    }
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("HTTP request from the VM failed")]
    Http(#[source] SessionError),
    #[error("Exit code {0}")]
    Exit(i32),
    /// The agent could not run the command (its message).
    #[error("{0}")]
    Start(String),
    #[error("Connection to the VM's agent was lost")]
    Lost,
    #[error("Timed out after {0:?}")]
    Timeout(Duration),
}

/// One probe: Ok = pass, Err = why it failed.
async fn probe(session: &Session, plan: &Plan, spec: &ProcessSpec) -> Result<(), ProbeError> {
    match &plan.check {
        Check::Http(url) => match session.probe_http(url, plan.timeout).await {
            Ok(code) if (200..300).contains(&code) => Ok(()),
            Ok(code) => Err(ProbeError::Status(code)),
            Err(e) => Err(ProbeError::Http(e)),
        },
        Check::Exec(args) => {
            let spec = ProcessSpec {
                args: args.clone(),
                ..spec.clone()
            };
            let mut proc = session.start(spec, Target::ContainerExec).await;
            let run = async {
                loop {
                    match proc.recv().await {
                        Some(Msg::Exit { code: 0, .. }) => return Ok(()),
                        Some(Msg::Exit { code, .. }) => return Err(ProbeError::Exit(code)),
                        Some(Msg::Error { message, .. }) => return Err(ProbeError::Start(message)),
                        Some(_) => {} // output is discarded
                        None => return Err(ProbeError::Lost),
                    }
                }
            };
            tokio::time::timeout(plan.timeout, run)
                .await
                .unwrap_or(Err(ProbeError::Timeout(plan.timeout)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::HealthCheck;

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).unwrap();
        assert_eq!(d("30s"), Duration::from_secs(30));
        assert_eq!(d("1m"), Duration::from_secs(60));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert_eq!(d("0"), Duration::ZERO);
        for bad in ["", "5", "5x", "s", "1..5s", "-1s", "1s2", "ms5"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn flag_validation() {
        let ok = |f: HealthFlags| f.validate();
        assert!(ok(HealthFlags::default()).is_ok());
        for url in ["http://localhost:8080/", "http://10.0.0.1", "HTTP://h/x?y"] {
            let f = HealthFlags {
                check_url: Some(url.into()),
                ..Default::default()
            };
            assert!(ok(f).is_ok(), "{url}");
        }
        for url in [
            "https://h/",
            "localhost:80",
            "http://",
            "http://h:x/",
            "http://h:0",
        ] {
            let f = HealthFlags {
                check_url: Some(url.into()),
                ..Default::default()
            };
            let e = ok(f).unwrap_err();
            assert!(e.starts_with("Invalid --health-check"), "{e}");
        }
        let both = HealthFlags {
            check_url: Some("http://h/".into()),
            cmd: Some("true".into()),
            ..Default::default()
        };
        assert!(ok(both).is_err());
        for (f, flag) in [
            (
                HealthFlags {
                    cmd: Some("  ".into()),
                    ..Default::default()
                },
                "--health-cmd",
            ),
            (
                HealthFlags {
                    cmd: Some("[1]".into()),
                    ..Default::default()
                },
                "--health-cmd",
            ),
            (
                HealthFlags {
                    interval: Some(Duration::ZERO),
                    ..Default::default()
                },
                "--health-interval",
            ),
            (
                HealthFlags {
                    retries: Some(0),
                    ..Default::default()
                },
                "--health-retries",
            ),
        ] {
            let e = ok(f).unwrap_err();
            assert!(e.contains(flag), "{e}");
            assert!(!e.contains('\n'));
        }
    }

    fn image(test: &[&str]) -> ImageConfig {
        ImageConfig {
            healthcheck: Some(HealthCheck {
                test: test.iter().map(|s| s.to_string()).collect(),
                interval_s: 5,
                timeout_s: 2,
                retries: 4,
                start_period_s: 7,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn plan_precedence() {
        let none = HealthFlags::default();
        assert_eq!(
            plan(&none, &ImageConfig::default()),
            None,
            "no check, no monitor"
        );
        let p = plan(&none, &image(&["CMD-SHELL", "curl -f localhost"])).unwrap();
        assert_eq!(
            p,
            Plan {
                check: Check::Exec(shell("curl -f localhost")),
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(2),
                retries: 4,
                start_period: Duration::from_secs(7),
            }
        );
        let p = plan(&none, &image(&["CMD", "/bin/check", "-q"])).unwrap();
        assert_eq!(p.check, Check::Exec(vec!["/bin/check".into(), "-q".into()]));
        assert_eq!(plan(&none, &image(&["NONE"])), None);

        // flags override the image's check and timings
        let f = HealthFlags {
            cmd: Some("test -e /tmp/ready".into()),
            interval: Some(Duration::from_secs(1)),
            retries: Some(2),
            ..Default::default()
        };
        let p = plan(&f, &image(&["CMD", "x"])).unwrap();
        assert_eq!(p.check, Check::Exec(shell("test -e /tmp/ready")));
        assert_eq!((p.interval, p.retries), (Duration::from_secs(1), 2));
        assert_eq!(
            p.timeout,
            Duration::from_secs(2),
            "the image's, not flagged"
        );
        let f = HealthFlags {
            check_url: Some("http://localhost:8080/".into()),
            ..Default::default()
        };
        let p = plan(&f, &ImageConfig::default()).unwrap();
        assert_eq!(p.check, Check::Http("http://localhost:8080/".into()));
        assert_eq!(
            (p.interval, p.timeout, p.retries, p.start_period),
            (
                DEFAULT_INTERVAL,
                DEFAULT_TIMEOUT,
                DEFAULT_RETRIES,
                Duration::ZERO
            )
        );
        // --health-cmd none disables the image's check; a JSON array is docker's Test form
        let f = HealthFlags {
            cmd: Some("none".into()),
            ..Default::default()
        };
        assert_eq!(plan(&f, &image(&["CMD", "x"])), None);
        let f = HealthFlags {
            cmd: Some(r#"["CMD", "stat", "/x"]"#.into()),
            ..Default::default()
        };
        assert_eq!(
            plan(&f, &ImageConfig::default()).unwrap().check,
            Check::Exec(vec!["stat".into(), "/x".into()])
        );
    }
}
