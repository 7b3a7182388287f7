//! Registry pulls over the OCI distribution API, with the oci-client crate.
//!
//! 1. [`resolve`]: manifest (a multi-arch index resolves to linux/(host arch)) and config,
//!    both digest-checked and bounded (4 MiB; the manifest read by fcvm itself,
//!    [`super::registry_manifest`]). That is enough to hit the cache.
//! 2. [`Remote::fetch_layers`] (only on a cache miss): each missing blob is streamed to a temp
//!    file in `blobs/sha256/`, verified, and renamed into place, so a blob there is always whole.
//!
//! Plain http is used for loopback registries (localhost, 127/8, ::1) unless `tls_verify` is
//! `Some(true)`, and everywhere with `Some(false)`. Credentials: `PullOptions::creds`, else the
//! first basic auth for the registry in $REGISTRY_AUTH_FILE, $XDG_RUNTIME_DIR/containers/auth.json,
//! ~/.config/containers/auth.json, ~/.docker/config.json; else anonymous.

use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use oci_client::client::{linux_amd64_resolver, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use tokio::io::AsyncWriteExt;

use super::member::{MemberError, METADATA_MAX};
use super::registry_manifest;
use super::{sha256_hex_of, ImageError, LayerBlob, PullOptions, Resolved};
use crate::paths::Dirs;

/// What is needed to fetch the layers later.
pub(crate) struct Remote {
    client: Client,
    reference: Reference,
    blobs: PathBuf,
    tmp: PathBuf,
}

/// True for registries on this machine's loopback (where plain http is the norm).
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if registry.matches(':').count() == 1 {
        registry.split(':').next().unwrap_or(registry)
    } else {
        registry
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn client(registry: &str, opts: &PullOptions) -> Client {
    let protocol = match opts.tls_verify {
        Some(false) => ClientProtocol::Http,
        None if is_loopback(registry) => ClientProtocol::HttpsExcept(vec![registry.to_string()]),
        _ => ClientProtocol::Https,
    };
    Client::new(ClientConfig {
        protocol,
        platform_resolver: Some(Box::new(if super::host_arch() == "amd64" {
            linux_amd64_resolver
        } else {
            oci_client::client::current_platform_resolver
        })),
        connect_timeout: Some(std::time::Duration::from_secs(15)),
        ..Default::default()
    })
}

/// Base64 (standard alphabet) as found in auth files; `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The first basic auth for `registry` in podman's and docker's auth files.
fn auth_from_files(registry: &str, repository: &str) -> Option<(String, String)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let files = [
        std::env::var_os("REGISTRY_AUTH_FILE").map(PathBuf::from),
        std::env::var_os("XDG_RUNTIME_DIR").map(|d| PathBuf::from(d).join("containers/auth.json")),
        home.as_ref()
            .map(|h| h.join(".config/containers/auth.json")),
        home.as_ref().map(|h| h.join(".docker/config.json")),
    ];
    let hub = registry == "docker.io";
    for file in files.into_iter().flatten() {
        let Ok(data) = std::fs::read(&file) else {
            continue;
        };
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(&data) else {
            continue;
        };
        let Some(auths) = json.get("auths").and_then(|a| a.as_object()) else {
            continue;
        };
        // Most specific key first (podman allows registry/namespace keys).
        let mut best: Option<(usize, &serde_json::Value)> = None;
        for (key, v) in auths {
            let key = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let key = key.trim_end_matches('/').trim_end_matches("/v1");
            let key = if hub && (key == "index.docker.io" || key == "registry-1.docker.io") {
                "docker.io"
            } else {
                key
            };
            let full = format!("{registry}/{repository}");
            let applies = key == registry || full == key || full.starts_with(&format!("{key}/"));
            if applies && best.is_none_or(|(len, _)| key.len() > len) {
                best = Some((key.len(), v));
            }
        }
        let Some((_, v)) = best else { continue };
        let decoded = v
            .get("auth")
            .and_then(|a| a.as_str())
            .and_then(base64_decode);
        let text = decoded.and_then(|d| String::from_utf8(d).ok());
        if let Some((user, pass)) = text.as_deref().and_then(|t| t.split_once(':')) {
            return Some((user.to_string(), pass.to_string()));
        }
    }
    None
}

/// Turns oci-client's errors into one line that says what to do.
fn map_err(e: OciDistributionError, reference: &Reference) -> ImageError {
    let registry = reference.registry().to_string();
    match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                )
            }) {
                ImageError::NotFound(reference.whole())
            } else if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                ImageError::Unauthorized(registry)
            } else {
                let msgs: Vec<_> = envelope
                    .errors
                    .iter()
                    .map(|e| format!("{:?}: {}", e.code, e.message))
                    .collect();
                ImageError::Registry {
                    registry,
                    reason: msgs.join("; "),
                }
            }
        }
        OciDistributionError::ImageManifestNotFoundError(why) => {
            ImageError::NotFound(format!("{} ({why})", reference.whole()))
        }
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => ImageError::Unauthorized(registry),
        OciDistributionError::RequestError(e) => {
            // The innermost cause ("Connection refused", "invalid peer certificate") is the useful part.
            let mut cause: &dyn std::error::Error = &e;
            while let Some(s) = cause.source() {
                cause = s;
            }
            ImageError::RegistryUnreachable {
                registry,
                reason: cause.to_string(),
            }
        }
        OciDistributionError::DigestError(_) => ImageError::BlobDigest(reference.whole()),
        OciDistributionError::UnsupportedMediaTypeError(m)
        | OciDistributionError::IncompatibleLayerMediaTypeError(m) => {
            ImageError::UnsupportedMediaType(m)
        }
        other => ImageError::Registry {
            registry,
            reason: other.to_string().replace('\n', " "),
        },
    }
}

/// Fetches manifest and config of `reference`; layers are only described.
pub(crate) async fn resolve(
    dirs: &Dirs,
    reference: &Reference,
    opts: &PullOptions,
) -> Result<Resolved, ImageError> {
    let step = crate::progress::step(format!("Resolving {}", reference.whole()));
    let client = client(reference.registry(), opts);
    let creds = opts
        .creds
        .clone()
        .or_else(|| auth_from_files(reference.registry(), reference.repository()));
    let auth = match creds {
        Some((u, p)) => RegistryAuth::Basic(u, p),
        None => RegistryAuth::Anonymous,
    };
    let map = |e| map_err(e, reference);
    let token = client
        .auth(reference, &auth, oci_client::RegistryOperation::Pull)
        .await
        .map_err(map)?;
    // Not oci-client's pull_image_manifest: it reads a manifest of any size into memory.
    let access = registry_manifest::Access {
        // Plain http exactly where `client` makes oci-client use it.
        http: match opts.tls_verify {
            Some(false) => true,
            None => is_loopback(reference.registry()),
            Some(true) => false,
        },
        token,
        auth: &auth,
    };
    let (manifest, digest) =
        registry_manifest::pull(reference, &access, super::host_arch()).await?;
    let mut config = Bounded::default();
    let pulled = client
        .pull_blob(reference, &manifest.config, &mut config)
        .await;
    if config.overflowed {
        return Err(ImageError::InvalidImage {
            image: reference.whole(),
            reason: format!("config: {}", MemberError::TooLarge),
        });
    }
    pulled.map_err(map)?;
    let config_raw = config.data;
    // oci-client checked it already; the cache key must not rest on someone else's check.
    if crate::util::sha256_hex(&config_raw) != sha256_hex_of(&manifest.config.digest)? {
        return Err(ImageError::BlobDigest(manifest.config.digest.clone()));
    }
    let blobs = dirs.blobs().join("sha256");
    let layers = manifest
        .layers
        .iter()
        .map(|l| {
            Ok(LayerBlob {
                root: blobs.clone(),
                path: blobs.join(sha256_hex_of(&l.digest)?),
                media_type: l.media_type.clone(),
                digest: Some(l.digest.clone()),
                diff_id: None,
            })
        })
        .collect::<Result<_, ImageError>>()?;
    step.finish();
    Ok(Resolved {
        digest,
        config_digest: manifest.config.digest.clone(),
        config_raw,
        layers,
        remote: Some(Remote {
            client,
            reference: reference.clone(),
            blobs,
            tmp: dirs.tmp(),
        }),
        keep: Vec::new(),
    })
}

/// A config being downloaded: refuses to grow past [`METADATA_MAX`] (an endless config from a
/// hostile registry would otherwise fill memory).
#[derive(Default)]
struct Bounded {
    data: Vec<u8>,
    overflowed: bool,
}

impl tokio::io::AsyncWrite for Bounded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if (self.data.len() + buf.len()) as u64 > METADATA_MAX {
            self.overflowed = true;
            return Poll::Ready(Err(std::io::Error::other(MemberError::TooLarge)));
        }
        self.data.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Remote {
    /// Downloads every layer blob not already in the blob cache.
    pub(crate) async fn fetch_layers(&self, layers: &[LayerBlob]) -> Result<(), ImageError> {
        let missing: Vec<&LayerBlob> = layers.iter().filter(|l| !l.path.is_file()).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let step = crate::progress::step(format!(
            "Pulling {} ({} layers)",
            self.reference.whole(),
            missing.len()
        ));
        crate::owner_only::create_dir(&self.blobs).map_err(ImageError::io(&self.blobs))?;
        crate::owner_only::create_dir(&self.tmp).map_err(ImageError::io(&self.tmp))?;
        for (i, layer) in missing.iter().enumerate() {
            step.set_detail(&format!("{}/{}", i + 1, missing.len()));
            let digest = layer.digest.clone().unwrap_or_default();
            let desc = OciDescriptor {
                media_type: layer.media_type.clone(),
                digest: digest.clone(),
                ..Default::default()
            };
            // The temp file lives in tmp/ (same filesystem), so a crash leaves nothing in blobs/.
            let tmp =
                tempfile::NamedTempFile::new_in(&self.tmp).map_err(ImageError::io(&self.tmp))?;
            let mut out =
                tokio::fs::File::from_std(tmp.reopen().map_err(ImageError::io(tmp.path()))?);
            self.client
                .pull_blob(&self.reference, &desc, &mut out)
                .await
                .map_err(|e| match e {
                    OciDistributionError::DigestError(_) => ImageError::LayerDigest(digest.clone()),
                    e => map_err(e, &self.reference),
                })?;
            out.flush().await.map_err(ImageError::io(tmp.path()))?;
            drop(out);
            // Verified again from disk: what is renamed into the cache is what was checked.
            let got = crate::util::sha256_file(tmp.path()).map_err(ImageError::io(tmp.path()))?;
            if got != sha256_hex_of(&digest)? {
                return Err(ImageError::LayerDigest(digest));
            }
            tmp.persist(&layer.path)
                .map_err(|e| ImageError::io(&layer.path)(e.error))?;
        }
        step.finish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries() {
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(r), "{r}");
        }
        for r in [
            "docker.io",
            "quay.io:443",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(r), "{r}");
        }
    }

    #[test]
    fn auth_file_lookup() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("auth.json");
        // "alice:s3cret" and "bob:pw:with:colons"
        std::fs::write(
            &f,
            r#"{"auths":{"reg.example:5000":{"auth":"YWxpY2U6czNjcmV0"},
                "https://index.docker.io/v1/":{"auth":"Ym9iOnB3OndpdGg6Y29sb25z"}}}"#,
        )
        .unwrap();
        std::env::set_var("REGISTRY_AUTH_FILE", &f);
        assert_eq!(
            auth_from_files("reg.example:5000", "x/y"),
            Some(("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            auth_from_files("docker.io", "library/busybox"),
            Some(("bob".into(), "pw:with:colons".into()))
        );
        assert_eq!(auth_from_files("other.example", "x"), None);
        std::env::remove_var("REGISTRY_AUTH_FILE");
        assert_eq!(base64_decode("YQ=="), Some(b"a".to_vec()));
    }
}
