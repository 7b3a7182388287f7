//! A container's bind mounts of host directories (Kubernetes volumes: emptyDir, hostPath,
//! configMap and secret directories all arrive so; `ctr run --mount`): each becomes one
//! more map of its VM (`fcvm::map::Map`: a pod member's added to its sandbox's
//! VM, a lone container's given at launch), bound at its destination by the guest.
//! What a map cannot carry is refused: a file or a missing source, mount propagation
//! to or from the host, options beyond read-only.

use std::path::Path;

use fcvm::map::Map;
use oci_spec::runtime::Mount;

use super::{refuse, Refused};

/// Options a bind of a map honours: read-only or not; recursive or not and private (a map
/// has no mounts beneath it, and none propagate); nosuid and nodev (always applied).
const HONOURED: &[&str] = &[
    "bind", "rbind", "ro", "rw", "private", "rprivate", "nosuid", "nodev",
];

/// Whether `m` is a bind mount (`type: bind`, or no type and a `bind`/`rbind` option, as
/// runc reads it).
pub(super) fn is_bind(m: &Mount) -> bool {
    let opts = m.options().iter().flatten();
    match m.typ().as_deref() {
        Some("bind") => true,
        None | Some("") | Some("none") => {
            let mut opts = opts;
            opts.any(|o| o == "bind" || o == "rbind")
        }
        _ => false,
    }
}

/// Bind mount `m` (`field` names it in errors) as a host directory for the guest to bind.
pub(super) fn host_bind(m: &Mount, field: &str) -> Result<Map, Refused> {
    let dest =
        (m.destination().to_str()).ok_or_else(|| refuse(field, "the destination is not UTF-8"))?;
    // Cleaned (`/a//b/./` is `/a/b`), so that two binds at one place are seen to be.
    let destination = fcvm_proto::clean_guest_path(dest).ok_or_else(|| {
        refuse(
            field,
            "the destination must be absolute, below / and without '..'",
        )
    })?;
    let mut read_only = false;
    for o in m.options().iter().flatten() {
        match o.as_str() {
            "ro" => read_only = true,
            "rw" => read_only = false,
            o if HONOURED.contains(&o) => {}
            "shared" | "rshared" | "slave" | "rslave" => {
                return Err(refuse(
                    field,
                    format!("option {o}: mount propagation cannot cross into the VM"),
                ))
            }
            o => {
                return Err(refuse(
                    field,
                    format!("option {o} (a bind of a host directory takes {HONOURED:?})"),
                ))
            }
        }
    }
    let source = m
        .source()
        .as_deref()
        .ok_or_else(|| refuse(field, "a bind needs a source"))?;
    if !source.is_absolute() {
        return Err(refuse(field, "the source must be an absolute host path"));
    }
    match std::fs::metadata(source) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Err(refuse(
                field,
                "only a host directory can be bound into the VM, not a file",
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(refuse(field, "the source does not exist"))
        }
        Err(e) => return Err(refuse(field, format!("cannot read the source: {e}"))),
    }
    Ok(Map {
        host: Path::new(source).to_path_buf(),
        guest: destination,
        read_only,
    })
}
