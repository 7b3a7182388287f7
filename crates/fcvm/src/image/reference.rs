//! Image references as podman spells them: a transport prefix, or a registry reference.
//!
//! | written                         | source                                             |
//! |---------------------------------|----------------------------------------------------|
//! | `oci:PATH[:TAG]`                | OCI layout directory                               |
//! | `oci-archive:PATH[:TAG]`        | tar of an OCI layout                               |
//! | `docker-archive:PATH[:NAME]`    | `docker save` / `podman save` tarball              |
//! | `builtin:busybox` / `base`      | [`super::ensure_builtin`]                          |
//! | `containers-storage:NAME`       | the host's podman store only                       |
//! | `docker://REF`                  | a registry only                                    |
//! | anything else                   | the podman store if it has it, else a registry     |
//!
//! Like containers/image, the path ends at the first `:` after the transport. Registry references
//! default to `docker.io/library/NAME:latest` (oci-spec's normalisation, the same as podman's).

use std::path::PathBuf;
use std::str::FromStr;

use oci_client::Reference;

use super::ImageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    OciLayout {
        path: PathBuf,
        tag: Option<String>,
    },
    OciArchive {
        path: PathBuf,
        tag: Option<String>,
    },
    DockerArchive {
        path: PathBuf,
        name: Option<String>,
    },
    Builtin(String),
    ContainersStorage(String),
    Registry {
        /// As written, for looking it up in the podman store.
        name: String,
        reference: Reference,
        /// A bare name: try the host's podman store first (podman's own order).
        local_first: bool,
    },
}

/// The builtin images `builtin:NAME` knows.
pub const BUILTINS: &[&str] = &["busybox", "base"];

/// Splits `PATH[:TAG]` at the first colon; an empty tag counts as none.
fn path_and_tag(reference: &str, rest: &str) -> Result<(PathBuf, Option<String>), ImageError> {
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, (!t.is_empty()).then(|| t.to_string())),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(ImageError::InvalidReference(
            reference.to_string(),
            "missing path".into(),
        ));
    }
    Ok((PathBuf::from(path), tag))
}

pub fn parse_reference(reference: &str) -> Result<Source, ImageError> {
    let invalid = |why: &str| ImageError::InvalidReference(reference.to_string(), why.to_string());
    if let Some(rest) = reference.strip_prefix("oci:") {
        let (path, tag) = path_and_tag(reference, rest)?;
        return Ok(Source::OciLayout { path, tag });
    }
    if let Some(rest) = reference.strip_prefix("oci-archive:") {
        let (path, tag) = path_and_tag(reference, rest)?;
        return Ok(Source::OciArchive { path, tag });
    }
    if let Some(rest) = reference.strip_prefix("docker-archive:") {
        let (path, name) = path_and_tag(reference, rest)?;
        return Ok(Source::DockerArchive { path, name });
    }
    if let Some(name) = reference.strip_prefix("builtin:") {
        if !BUILTINS.contains(&name) {
            return Err(ImageError::NotFound(format!(
                "{reference} (builtin images: {})",
                BUILTINS.join(", ")
            )));
        }
        return Ok(Source::Builtin(name.to_string()));
    }
    if let Some(name) = reference.strip_prefix("containers-storage:") {
        if name.is_empty() {
            return Err(invalid("missing name"));
        }
        return Ok(Source::ContainersStorage(name.to_string()));
    }
    let (name, local_first) = match reference.strip_prefix("docker://") {
        Some(rest) => (rest, false),
        None => (reference, true),
    };
    let parsed = Reference::from_str(name).map_err(|e| invalid(&e.to_string()))?;
    Ok(Source::Registry {
        name: name.to_string(),
        reference: parsed,
        local_first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(s: &str) -> (String, String, Option<String>, Option<String>, bool) {
        match parse_reference(s).unwrap() {
            Source::Registry {
                reference,
                local_first,
                ..
            } => (
                reference.registry().to_string(),
                reference.repository().to_string(),
                reference.tag().map(str::to_string),
                reference.digest().map(str::to_string),
                local_first,
            ),
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn transports() {
        assert_eq!(
            parse_reference("oci:/x/y:v1").unwrap(),
            Source::OciLayout {
                path: "/x/y".into(),
                tag: Some("v1".into())
            }
        );
        assert_eq!(
            parse_reference("oci:rel/dir").unwrap(),
            Source::OciLayout {
                path: "rel/dir".into(),
                tag: None
            }
        );
        assert_eq!(
            parse_reference("oci-archive:/a.tar:latest").unwrap(),
            Source::OciArchive {
                path: "/a.tar".into(),
                tag: Some("latest".into())
            }
        );
        assert_eq!(
            parse_reference("docker-archive:/a.tar:busybox:latest").unwrap(),
            Source::DockerArchive {
                path: "/a.tar".into(),
                name: Some("busybox:latest".into())
            }
        );
        assert_eq!(
            parse_reference("builtin:busybox").unwrap(),
            Source::Builtin("busybox".into())
        );
        assert!(matches!(
            parse_reference("builtin:nginx"),
            Err(ImageError::NotFound(_))
        ));
        assert_eq!(
            parse_reference("containers-storage:localhost/x:1").unwrap(),
            Source::ContainersStorage("localhost/x:1".into())
        );
        assert!(parse_reference("oci:").is_err());
        assert!(parse_reference("oci-archive::tag").is_err());
    }

    #[test]
    fn registry_defaults_like_podman() {
        assert_eq!(
            registry("busybox"),
            (
                "docker.io".into(),
                "library/busybox".into(),
                Some("latest".into()),
                None,
                true
            )
        );
        assert_eq!(
            registry("127.0.0.1:5000/busybox:1.36"),
            (
                "127.0.0.1:5000".into(),
                "busybox".into(),
                Some("1.36".into()),
                None,
                true
            )
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        let (reg, repo, _, digest, local) = registry(&format!("docker://quay.io/a/b@{d}"));
        assert_eq!((reg.as_str(), repo.as_str()), ("quay.io", "a/b"));
        assert_eq!(digest, Some(d));
        assert!(!local);
        assert!(matches!(
            parse_reference("Not A Name!"),
            Err(ImageError::InvalidReference(..))
        ));
    }
}
