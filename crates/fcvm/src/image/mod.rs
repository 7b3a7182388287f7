//! Images: a reference → a read-only erofs root filesystem + the image's config (docs/design.md §7).
//!
//! The guest agent mounts the erofs image read-only under an overlay; this module only has to
//! produce it, once per image, from wherever the image lives:
//!
//! 1. `reference` parses podman-style transports (`oci:`, `oci-archive:`, `docker-archive:`,
//!    `containers-storage:`, `builtin:`) or a registry reference.
//! 2. A source collects manifest, config and layer blobs into a `Resolved`: `layout` (OCI
//!    layout, oci-archive, the host's podman store), `docker_archive`, `registry`. Manifest and
//!    config are digest-verified as they are read; layer blobs are verified before unpacking.
//! 3. The cache key is the config digest: `images/<hex>/{rootfs.erofs,config.json}`. A hit does
//!    no more work (a registry pull stops after manifest + config). A miss takes a per-image lock
//!    so concurrent runs build once.
//! 4. `rootfs` unpacks the layers (`unpack`: whiteouts, no escapes) within the image's
//!    [`UnpackLimit`] (`limits`), runs `mkfs.erofs`, and publishes the finished directory with
//!    one rename.
//!
//! Untrusted input never reaches the host: members of layouts and archives are read only as
//! regular files inside their own tree (`member`, `archive`), manifests and configs are bounded
//! (4 MiB), errors never quote a file's content, and every temp tree is 0700
//! (docs/security.md).
//!
//! [`ensure_builtin`] (`builtin`) makes an image that needs no internet or registry.

mod archive;
mod builtin;
mod config;
mod docker_archive;
mod layout;
mod limits;
mod member;
mod reference;
mod registry;
mod registry_manifest;
mod rootfs;
#[cfg(test)]
mod testutil;
mod unpack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::paths::Dirs;
use crate::util::ToolError;

pub use builtin::{ensure_builtin, ensure_builtin_busybox};
pub use limits::{ParseLimitError, UnpackLimit, UNPACK_LIMIT_ENV};
pub use reference::{parse_reference, Source};

/// What the agent needs from an image's config to build an OCI runtime config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub healthcheck: Option<HealthCheck>,
    pub labels: BTreeMap<String, String>,
}

/// Docker's HEALTHCHECK (not part of the OCI image spec, but common in images).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval_s: u64,
    pub timeout_s: u64,
    pub retries: u32,
    pub start_period_s: u64,
}

/// An image ready to attach to a VM.
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub reference: String,
    /// `sha256:…` of the image: its manifest digest, or its config digest when the source has
    /// no manifest of its own (docker-archive).
    pub digest: String,
    /// The erofs file: read-only, shared by every VM of this image.
    pub rootfs: PathBuf,
    pub fstype: String,
    pub config: ImageConfig,
}

/// Options for fetching and unpacking an image.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// `None`: https, except plain http for loopback registries. `Some(false)`: plain http.
    pub tls_verify: Option<bool>,
    /// Basic-auth user and password; else the podman/docker auth files, else anonymous.
    pub creds: Option<(String, String)>,
    /// Most the image may unpack (a cache hit unpacks nothing, so is never refused).
    pub unpack_limit: UnpackLimit,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("Invalid image reference {0:?}: {1}")]
    InvalidReference(String, String),
    #[error("Image not found: {0}")]
    NotFound(String),
    #[error("Cannot read image archive {path}: {reason}")]
    UnreadableArchive { path: PathBuf, reason: String },
    #[error("Invalid image {image}: {reason}")]
    InvalidImage { image: String, reason: String },
    #[error("Layer {0} digest mismatch")]
    LayerDigest(String),
    #[error("Blob {0} digest mismatch")]
    BlobDigest(String),
    #[error("Unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("Unsupported digest {0:?} (only sha256)")]
    UnsupportedDigest(String),
    #[error("Registry {registry} unreachable: {reason}")]
    RegistryUnreachable { registry: String, reason: String },
    #[error("Registry {0} refused the credentials (try `podman login` or --creds)")]
    Unauthorized(String),
    #[error("Registry {registry} error: {reason}")]
    Registry { registry: String, reason: String },
    #[error("Layer {layer} has an unsafe path {path:?}")]
    UnsafePath { layer: String, path: String },
    #[error("Cannot unpack layer {layer}")]
    Unpack {
        layer: String,
        /// Says what went wrong without quoting the layer (see `unpack::content_free`).
        #[source]
        source: std::io::Error,
    },
    #[error(
        "Unpack limit reached in {at}: {what} (raise it with --unpack-limit or FCVM_UNPACK_LIMIT)"
    )]
    UnpackLimit { at: String, what: String },
    #[error("Cannot build the builtin image: {0}")]
    Builtin(String),
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("I/O error on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Image preparation was cancelled")]
    Cancelled,
}

impl ImageError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
        move |source| ImageError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Everything a source found, before any layer is unpacked.
pub(crate) struct Resolved {
    /// Image digest for [`PreparedImage::digest`].
    pub digest: String,
    /// `sha256:<hex>` of `config_raw`, already verified; the cache key.
    pub config_digest: String,
    pub config_raw: Vec<u8>,
    pub layers: Vec<LayerBlob>,
    /// Set for registry images: layers are fetched only on a cache miss.
    pub remote: Option<registry::Remote>,
    /// Temp dirs holding extracted archives; removed when the build is done.
    pub keep: Vec<tempfile::TempDir>,
}

/// One layer: where its blob is (or will be, for a registry) and what to check it against.
#[derive(Debug, Clone)]
pub(crate) struct LayerBlob {
    /// The tree the blob is read in (a layout, an extracted archive, the blob cache): it is
    /// opened beneath it ([`member::open`]), never through a link out of it.
    pub root: PathBuf,
    /// The blob, inside `root`.
    pub path: PathBuf,
    /// Empty when the source does not say (docker-archive): compression is sniffed.
    pub media_type: String,
    /// Digest of the blob as stored (compressed), checked before unpacking.
    pub digest: Option<String>,
    /// Digest of the uncompressed tar from the config's rootfs.diff_ids, checked while unpacking.
    pub diff_id: Option<String>,
}

/// An OCI/Docker descriptor, manifest or index: the few fields we use, all formats at once.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub config: Option<Descriptor>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    /// Present for an image index / manifest list.
    pub manifests: Option<Vec<Descriptor>>,
}

/// The hex part of a `sha256:` digest, validated (it becomes a file name).
pub(crate) fn sha256_hex_of(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(h),
        _ => Err(ImageError::UnsupportedDigest(digest.to_string())),
    }
}

/// GOARCH of this host, for picking an entry of a multi-arch index.
pub(crate) fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Runs blocking work (file I/O, tools) off the async runtime.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImageError> + Send + 'static,
) -> Result<T, ImageError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(ImageError::Cancelled),
    }
}

/// Resolves `reference`, fetches/reads it, verifies digests, builds (or reuses) the rootfs.
pub async fn prepare(
    dirs: &Dirs,
    reference: &str,
    opts: &PullOptions,
) -> Result<PreparedImage, ImageError> {
    let source = parse_reference(reference)?;
    let limit = opts.unpack_limit;
    let d = dirs.clone();
    let what = reference.to_string();
    let resolved = match source {
        Source::OciLayout { path, tag } => {
            blocking(move || layout::resolve_dir(&path, tag.as_deref(), &what)).await?
        }
        Source::OciArchive { path, tag } => {
            blocking(move || layout::resolve_archive(&d, &path, tag.as_deref(), &what, limit))
                .await?
        }
        Source::DockerArchive { path, name } => {
            blocking(move || docker_archive::resolve(&d, &path, name.as_deref(), &what, limit))
                .await?
        }
        Source::Builtin(name) => {
            blocking(move || {
                let dir = ensure_builtin(&d, &name)?;
                layout::resolve_dir(&dir, Some("latest"), &what)
            })
            .await?
        }
        Source::ContainersStorage(name) => {
            blocking(move || {
                layout::resolve_podman(&d, &name, &what, limit)?.ok_or_else(|| {
                    let why = match crate::util::which("podman") {
                        None => " (podman is not installed)",
                        Some(_) => "",
                    };
                    ImageError::NotFound(format!("{what}{why}"))
                })
            })
            .await?
        }
        Source::Registry {
            name,
            reference: r,
            local_first,
        } => {
            let (d2, n2, w2) = (d.clone(), name.clone(), what.clone());
            let local = if local_first {
                blocking(move || layout::resolve_podman(&d2, &n2, &w2, limit)).await?
            } else {
                None
            };
            match local {
                Some(res) => res,
                None => registry::resolve(dirs, &r, opts).await?,
            }
        }
    };
    finish(dirs, reference, resolved, limit).await
}

/// Common tail of every source: parse the config, hit the cache or build under the lock.
async fn finish(
    dirs: &Dirs,
    reference: &str,
    mut resolved: Resolved,
    limit: UnpackLimit,
) -> Result<PreparedImage, ImageError> {
    let (config, diff_ids) = config::parse(&resolved.config_raw, reference)?;
    if diff_ids.len() != resolved.layers.len() {
        return Err(ImageError::InvalidImage {
            image: reference.to_string(),
            reason: format!(
                "config lists {} layers, manifest {}",
                diff_ids.len(),
                resolved.layers.len()
            ),
        });
    }
    for (layer, diff_id) in resolved.layers.iter_mut().zip(diff_ids) {
        unpack::compression_of(&layer.media_type)?;
        layer.diff_id = Some(diff_id);
    }
    let hex = sha256_hex_of(&resolved.config_digest)?.to_string();
    let prepared = |rootfs: PathBuf| PreparedImage {
        reference: reference.to_string(),
        digest: resolved.digest.clone(),
        rootfs,
        fstype: "erofs".into(),
        config: config.clone(),
    };
    if let Some(rootfs) = rootfs::cached(dirs, &hex) {
        return Ok(prepared(rootfs));
    }
    let (d, h) = (dirs.clone(), hex.clone());
    let lock = blocking(move || rootfs::lock(&d, &h)).await?;
    // Another process may have built it while we waited for the lock.
    if let Some(rootfs) = rootfs::cached(dirs, &hex) {
        return Ok(prepared(rootfs));
    }
    // Blobs this run downloads: an image refused for its size leaves none of them behind.
    let fetched: Vec<PathBuf> = resolved
        .layers
        .iter()
        .filter(|l| l.path.starts_with(dirs.blobs()) && !l.path.is_file())
        .map(|l| l.path.clone())
        .collect();
    if let Some(remote) = resolved.remote.take() {
        remote.fetch_layers(&resolved.layers).await?;
    }
    let (d, layers, keep, cfg) = (
        dirs.clone(),
        resolved.layers.clone(),
        std::mem::take(&mut resolved.keep),
        config.clone(),
    );
    let rootfs = blocking(move || {
        let r = rootfs::build(&d, &hex, &layers, &cfg, limit);
        drop(keep);
        r
    })
    .await;
    drop(lock);
    if let Err(ImageError::UnpackLimit { .. }) = &rootfs {
        for p in &fetched {
            let _ = std::fs::remove_file(p);
        }
    }
    if let Err(ImageError::LayerDigest(bad)) = &rootfs {
        // A corrupt blob in our own cache would fail every later run: drop it to refetch.
        for l in resolved
            .layers
            .iter()
            .filter(|l| l.digest.as_ref() == Some(bad))
        {
            if l.path.starts_with(dirs.blobs()) {
                let _ = std::fs::remove_file(&l.path);
            }
        }
    }
    Ok(prepared(rootfs?))
}
