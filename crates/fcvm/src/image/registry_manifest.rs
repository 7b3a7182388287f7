//! A registry image's manifest, read with a bound (docs/security.md §3).
//!
//! oci-client 0.14 reads a manifest response whole into memory (`Response::bytes`) and has no
//! size option, so a hostile registry could send an endless one. fcvm lets oci-client
//! authenticate (its token, if the registry gives one) and fetches the manifest itself, in
//! chunks, refusing it past [`METADATA_MAX`] (4 MiB, as for configs and archive members:
//! registries cap manifests at a few MiB). Then as oci-client would: the digest checked
//! (against the reference's, else the registry's `Docker-Content-Digest`), the schema
//! version, and a multi-arch index resolved to this host's platform. Errors never quote the
//! document (`json_problem`).

use oci_client::manifest::{
    OciImageManifest, OciManifest, IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE,
    OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE,
};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;

use super::member::{json_problem, MemberError, METADATA_MAX};
use super::ImageError;

/// How to reach the registry: scheme and credentials (decided by the caller, as for
/// oci-client's requests).
pub(crate) struct Access<'a> {
    /// Plain http (a loopback registry, or `--tls-verify=false`).
    pub http: bool,
    /// The bearer token oci-client obtained, if the registry gave one.
    pub token: Option<String>,
    pub auth: &'a RegistryAuth,
}

/// The image manifest of `reference` and its digest (an index resolved to `arch`).
pub(crate) async fn pull(
    reference: &Reference,
    access: &Access<'_>,
    arch: &str,
) -> Result<(OciImageManifest, String), ImageError> {
    let (manifest, digest) = pull_one(reference, access).await?;
    let index = match manifest {
        OciManifest::Image(m) => return Ok((m, digest)),
        OciManifest::ImageIndex(i) => i,
    };
    let entry = index.manifests.iter().find(|m| {
        m.platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == arch)
    });
    let Some(entry) = entry else {
        return Err(ImageError::NotFound(format!(
            "{} (no linux/{arch} image in its index)",
            reference.whole()
        )));
    };
    let one = reference.clone_with_digest(entry.digest.clone());
    match pull_one(&one, access).await? {
        (OciManifest::Image(m), d) => Ok((m, d)),
        (OciManifest::ImageIndex(_), _) => Err(invalid(reference, "an index inside an index")),
    }
}

fn invalid(reference: &Reference, why: impl std::fmt::Display) -> ImageError {
    ImageError::InvalidImage {
        image: reference.whole(),
        reason: format!("manifest: {why}"),
    }
}

/// One manifest document, bounded and digest-checked.
async fn pull_one(
    reference: &Reference,
    access: &Access<'_>,
) -> Result<(OciManifest, String), ImageError> {
    let registry = reference.resolve_registry();
    let url = format!(
        "{}://{registry}/v2/{}/manifests/{}{}",
        if access.http { "http" } else { "https" },
        reference.repository(),
        reference
            .digest()
            .unwrap_or_else(|| reference.tag().unwrap_or("latest")),
        reference
            .namespace()
            .map(|ns| format!("?ns={ns}"))
            .unwrap_or_default(),
    );
    let accept = [
        OCI_IMAGE_MEDIA_TYPE,
        IMAGE_MANIFEST_MEDIA_TYPE,
        OCI_IMAGE_INDEX_MEDIA_TYPE,
        IMAGE_MANIFEST_LIST_MEDIA_TYPE,
    ]
    .join(", ");
    let unreachable = |e: reqwest::Error| {
        let mut cause: &dyn std::error::Error = &e;
        while let Some(s) = cause.source() {
            cause = s;
        }
        ImageError::RegistryUnreachable {
            registry: reference.registry().into(),
            reason: cause.to_string(),
        }
    };
    let client = reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(15))
        .build()
        .map_err(unreachable)?;
    let mut req = client.get(&url).header("Accept", accept);
    req = match (&access.token, access.auth) {
        (Some(t), _) => req.bearer_auth(t),
        (None, RegistryAuth::Basic(u, p)) => req.basic_auth(u, Some(p)),
        _ => req,
    };
    let mut res = req.send().await.map_err(unreachable)?;
    match res.status().as_u16() {
        200..=299 => {}
        404 => return Err(ImageError::NotFound(reference.whole())),
        401 | 403 => return Err(ImageError::Unauthorized(reference.registry().into())),
        s => {
            return Err(ImageError::Registry {
                registry: reference.registry().into(),
                reason: format!("HTTP {s} for the manifest"),
            })
        }
    }
    let header_digest = res
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if res.content_length().is_some_and(|n| n > METADATA_MAX) {
        return Err(invalid(reference, MemberError::TooLarge));
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(unreachable)? {
        if (body.len() + chunk.len()) as u64 > METADATA_MAX {
            return Err(invalid(reference, MemberError::TooLarge));
        }
        body.extend_from_slice(&chunk);
    }
    let digest = format!("sha256:{}", crate::util::sha256_hex(&body));
    if let Some(want) = reference.digest().map(str::to_string).or(header_digest) {
        if want.starts_with("sha256:") && want != digest {
            return Err(ImageError::BlobDigest(want));
        }
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Versioned {
        schema_version: i32,
    }
    let v: Versioned =
        serde_json::from_slice(&body).map_err(|e| invalid(reference, json_problem(&e)))?;
    if v.schema_version != 2 {
        return Err(invalid(
            reference,
            format!("schema version {}", v.schema_version),
        ));
    }
    let manifest: OciManifest =
        serde_json::from_slice(&body).map_err(|e| invalid(reference, json_problem(&e)))?;
    Ok((manifest, digest))
}
