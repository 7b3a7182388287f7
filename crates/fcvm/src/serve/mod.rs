//! `fcvm serve`: an HTTP server that the unmodified E2B SDK drives (issue 13; docs/serve.md).
//!
//! One process, one listening socket, two faces:
//! - the E2B REST API ([`rest`]): `E2B_API_URL` points here; sandboxes are created, listed,
//!   timed out and killed; the `X-API-Key` header is checked when a key is configured;
//! - envd ([`envd`]): `E2B_SANDBOX_URL` points here too; the SDK names the sandbox of every
//!   call in the `E2b-Sandbox-Id` header (or a `49983-<id>.<domain>` Host, for a wildcard DNS
//!   proxy in front), and proves it may use it with `X-Access-Token`. Process calls are Connect
//!   RPCs ([`connect`], [`pb`]) turned into container execs over the sandbox's agent session
//!   ([`process`]): nothing listens inside the guest.
//!
//! Each sandbox is one VM ([`sandbox`]), launched like `fcvm podman run` launches one. A timer
//! per sandbox kills it when its E2B timeout passes (or pauses it, with `autoPause`); pause,
//! resume, fork and snapshots are fcvm snapshots ([`lifecycle`]). SIGTERM or SIGINT stops
//! every sandbox and removes every snapshot the server took, then the server exits.

mod body;
pub mod connect;
mod defaults;
mod envd;
mod envdpb;
mod files;
mod fspb;
mod lifecycle;
mod list;
mod metrics;
mod multipart;
mod openapi;
pub mod pb;
pub mod pool;
pub mod process;
mod relay;
mod rest;
pub mod sandbox;
mod snapshots;
pub mod template;
pub mod vm;
mod watch;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;

use crate::paths::Dirs;
use sandbox::{Paused, Sandbox};
use template::Template;

/// The envd version the server claims: what the SDK checks to pick its calls (0.5.7: stdin can
/// be closed, the default user is the server's, uploads may be octet streams).
pub const ENVD_VERSION: &str = "0.5.7";
/// E2B's default sandbox lifetime.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest timeout accepted (E2B's own limit).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The template a create without `templateID` gets, and its image.
pub const DEFAULT_TEMPLATE: (&str, &str) = ("base", "builtin:base");

/// E2B names the node a sandbox runs on; this server is the only one.
pub const CLIENT_ID: &str = "fcvm";

/// An E2B API error.
#[derive(Debug)]
pub struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub(crate) fn bad_request(m: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, m.into())
    }
    pub(crate) fn not_found(id: &str) -> ApiError {
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
            Json(serde_json::json!({"code": self.0.as_u16(), "message": self.1})),
        )
            .into_response()
    }
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Required for a non-loopback `listen`.
    pub api_key: Option<String>,
    /// templateID → image reference; `base` → `builtin:base` unless given.
    pub templates: BTreeMap<String, String>,
    pub cpus: u32,
    pub mem_mib: u32,
    /// Sandboxes alive (or being created) at a time.
    pub max_sandboxes: usize,
    /// VMs kept launched and waiting per template (the warm pool; 0: none).
    pub pool: usize,
    /// `--map`: host directories every sandbox's container sees (docs/volumes.md).
    pub maps: Vec<crate::map::Map>,
}

pub struct Server {
    dirs: Dirs,
    templates: HashMap<String, Template>,
    /// The warm pool of each template (none without `--pool`).
    pools: HashMap<String, Arc<pool::Pool>>,
    api_key: Option<String>,
    max_sandboxes: usize,
    sandboxes: Mutex<HashMap<String, Arc<Sandbox>>>,
    /// Paused sandboxes: no VM, a snapshot each (lock order: `sandboxes`, then this).
    paused: Mutex<HashMap<String, Arc<Paused>>>,
    /// Sandboxes being paused or resumed: one such change at a time per sandbox.
    changing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Snapshots taken with `POST /sandboxes/{id}/snapshots`, by snapshot id: templates that
    /// creates restore.
    snapshots: Mutex<std::collections::BTreeMap<String, Arc<sandbox::SnapshotTemplate>>>,
    /// Every snapshot this server took that is still held: removed at its stop whoever
    /// still holds them.
    taken: Mutex<Vec<Weak<sandbox::Held>>>,
    /// Creates in progress (they count against `max_sandboxes`).
    creating: Mutex<usize>,
}

impl Server {
    fn get(&self, id: &str) -> Option<Arc<Sandbox>> {
        self.sandboxes.lock().expect("sandboxes").get(id).cloned()
    }

    fn all(&self) -> Vec<Arc<Sandbox>> {
        self.sandboxes
            .lock()
            .expect("sandboxes")
            .values()
            .cloned()
            .collect()
    }

    fn all_paused(&self) -> Vec<Arc<Paused>> {
        self.paused
            .lock()
            .expect("paused")
            .values()
            .cloned()
            .collect()
    }

    /// Removes and stops a sandbox, or removes a paused one and its snapshot; false if there
    /// is none of that id.
    fn kill(&self, id: &str) -> bool {
        let s = self.sandboxes.lock().expect("sandboxes").remove(id);
        match s {
            Some(s) => {
                s.stop();
                tracing::info!(sandbox = id, "sandbox stopped");
                true
            }
            None => {
                let p = self.paused.lock().expect("paused").remove(id);
                if p.is_some() {
                    tracing::info!(sandbox = id, "paused sandbox removed");
                }
                p.is_some()
            }
        }
    }

    /// Kills `s` if it is still the running incarnation of its sandbox (a paused or resumed
    /// sandbox's old VM is not).
    fn kill_incarnation(&self, s: &Arc<Sandbox>) {
        let current = self
            .sandboxes
            .lock()
            .expect("sandboxes")
            .get(&s.id)
            .is_some_and(|x| Arc::ptr_eq(x, s));
        if current {
            self.kill(&s.id);
        }
    }

    fn insert(self: &Arc<Self>, s: Arc<Sandbox>) {
        self.sandboxes
            .lock()
            .expect("sandboxes")
            .insert(s.id.clone(), s.clone());
        self.watch(s);
    }

    /// Starts the timer of `s` (which is in `sandboxes`).
    fn watch(self: &Arc<Self>, s: Arc<Sandbox>) {
        tokio::spawn(watch(Arc::downgrade(self), s));
    }
}

/// Kills `s` when its timeout passes (pauses it instead with `autoPause`) or its container
/// dies.
async fn watch(server: Weak<Server>, s: Arc<Sandbox>) {
    let timed_out = loop {
        let left = (s.end_at() - Utc::now()).to_std().unwrap_or_default();
        if left.is_zero() {
            tracing::info!(sandbox = s.id, "sandbox timed out");
            break true;
        }
        tokio::select! {
            _ = tokio::time::sleep(left) => {}
            _ = s.timer.notified() => {}
            _ = s.vm.died.notified() => break false,
        }
    };
    let Some(server) = server.upgrade() else {
        return;
    };
    if timed_out && s.auto_pause {
        match lifecycle::pause(&server, &s.id).await {
            Ok(()) => return,
            Err(e) => tracing::warn!(sandbox = s.id, "auto-pause failed, killing: {}", e.1),
        }
    }
    server.kill_incarnation(&s);
}

/// Checks the options, makes every template ready, then serves until SIGTERM/SIGINT; `ready`
/// is told the bound address first. Every sandbox is stopped before this returns.
pub async fn serve(dirs: &Dirs, opts: ServeOptions, ready: impl FnOnce(SocketAddr)) -> Result<()> {
    if !opts.listen.ip().is_loopback() && opts.api_key.is_none() {
        bail!(
            "--listen {} is not a loopback address: an API key is required (--api-key-file)",
            opts.listen
        );
    }
    let accel = crate::run::check_machine(crate::vmm::VmmKind::Qemu, opts.cpus, opts.mem_mib)?;
    crate::map::Map::check_unique(&opts.maps)?;
    let mut templates = opts.templates.clone();
    templates
        .entry(DEFAULT_TEMPLATE.0.into())
        .or_insert_with(|| DEFAULT_TEMPLATE.1.into());
    let d = dirs.clone();
    let assets = tokio::task::spawn_blocking(move || {
        crate::assets::ensure(&d, &crate::assets::find_agent()?)
    })
    .await??;
    let mut ready_templates = HashMap::new();
    for (id, image) in templates {
        let shape = (opts.cpus, opts.mem_mib, &opts.maps[..]);
        let t = Template::prepare(dirs, &id, &image, &assets, accel, shape)
            .await
            .with_context(|| format!("Template {id} ({image})"))?;
        ready_templates.insert(id, t);
    }
    let pools: HashMap<String, Arc<pool::Pool>> = match opts.pool {
        0 => HashMap::new(),
        n => ready_templates
            .keys()
            .map(|id| (id.clone(), pool::Pool::new(n)))
            .collect(),
    };
    let refills: Vec<_> = pools
        .iter()
        .map(|(id, p)| p.spawn_refill(dirs.clone(), ready_templates[id].clone()))
        .collect();
    let server = Arc::new(Server {
        dirs: dirs.clone(),
        pools,
        templates: ready_templates,
        api_key: opts.api_key.clone(),
        max_sandboxes: opts.max_sandboxes,
        sandboxes: Mutex::default(),
        paused: Mutex::default(),
        changing: Mutex::default(),
        snapshots: Mutex::default(),
        taken: Mutex::default(),
        creating: Mutex::new(0),
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("Cannot listen on {}", opts.listen))?;
    ready(listener.local_addr()?);
    let app = rest::router(server.clone())
        .merge(envd::router(server.clone()))
        .merge(files::router(server.clone()))
        .route("/openapi.json", axum::routing::get(openapi::document))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) });
    let served = axum::serve(listener, app);
    let result = tokio::select! {
        r = served => r.context("Server failed"),
        _ = termination() => Ok(()),
    };
    for r in refills {
        r.abort();
    }
    for p in server.pools.values() {
        p.clear();
    }
    for s in server.all() {
        server.kill(&s.id);
    }
    // Paused sandboxes' and taken snapshots go with their last holder: nothing is left.
    server.paused.lock().expect("paused").clear();
    server.snapshots.lock().expect("snapshots").clear();
    // The process exits without dropping what tasks still hold: remove them by name.
    for held in server.taken.lock().expect("taken").drain(..) {
        if let Some(h) = held.upgrade() {
            h.remove();
        }
    }
    result
}

/// Compares secrets (API keys, access tokens) in time independent of where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// SIGTERM or SIGINT.
async fn termination() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without handlers the default action ends the process; nothing to wait for here.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
