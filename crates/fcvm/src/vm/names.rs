//! VM names are unique: a run holds an exclusive lock on `locks/name-<name>.lock` for as long
//! as its VM lives, so two runs racing for one name cannot both win. A dead VM's leftover
//! directory also keeps its name until `fcvm rm` removes it (podman keeps a stopped
//! container's name the same way).

use std::fs::File;

use fs2::FileExt;

use crate::paths::Dirs;

#[derive(Debug, thiserror::Error)]
pub enum NameError {
    #[error("Invalid name {0:?}: use letters, digits, '_', '.', '-' (up to 63, not starting with '.' or '-')")]
    Invalid(String),
    #[error("The name {0:?} is already in use by a running VM")]
    InUse(String),
    #[error("The name {0:?} is in use by dead VM {1}: remove it with `fcvm rm {0}`")]
    Dead(String, String),
    #[error("Cannot lock name {0:?}")]
    Lock(String, #[source] std::io::Error),
}

/// Held for the VM's lifetime; the lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct NameLock {
    _file: File,
}

pub fn validate(name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(NameError::Invalid(name.into()))
    }
}

/// Claims `name` for a new VM.
pub fn claim(dirs: &Dirs, name: &str) -> Result<NameLock, NameError> {
    validate(name)?;
    let lock_err = |e| NameError::Lock(name.into(), e);
    crate::owner_only::create_dir(&dirs.locks()).map_err(lock_err)?;
    let file = crate::owner_only::open_lock(&dirs.locks().join(format!("name-{name}.lock")))
        .map_err(lock_err)?;
    if file.try_lock_exclusive().is_err() {
        return Err(NameError::InUse(name.into()));
    }
    // We hold the lock: any VM directory still carrying this name has no live owner.
    if let Some((_, st)) = super::list(dirs).into_iter().find(|(_, s)| s.name == name) {
        return Err(NameError::Dead(name.into(), st.id));
    }
    Ok(NameLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_of_a_name_fails_until_released() {
        let d = tempfile::tempdir().unwrap();
        let dirs = Dirs::new(d.path());
        let a = claim(&dirs, "web").unwrap();
        assert!(matches!(claim(&dirs, "web"), Err(NameError::InUse(_))));
        drop(a);
        claim(&dirs, "web").unwrap();
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", "-x", ".x", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        validate("web-1.a_b").unwrap();
    }
}
