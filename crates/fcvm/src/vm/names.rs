//! Names of VMs and snapshots: one check ([`Name`]) for every command that takes one, and the
//! uniqueness of VM names.
//!
//! A [`Name`] is parsed once, at the edge (clap's `value_parser`), and passed typed to what
//! builds a path from it (`snapshots/<name>`, `locks/name-<name>.lock`): letters, digits, `_`,
//! `.` and `-`, at most 63, not starting with `.` or `-`, so it is always one path component
//! and never `..` or an option.
//!
//! VM names are unique: a run holds an exclusive lock on `locks/name-<name>.lock` for as long
//! as its VM lives, so two runs racing for one name cannot both win. A dead VM's leftover
//! directory also keeps its name until it is removed (`fcvm rm`, or reaped by `fcvm ls`).

use std::fmt;
use std::fs::File;
use std::ops::Deref;
use std::str::FromStr;

use crate::paths::Dirs;

/// Longest name (a DNS label's limit: a VM's name is its default hostname).
pub const MAX_LEN: usize = 63;

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

/// A checked VM or snapshot name (see the module docs). Reads as a `&str`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub fn new(name: impl Into<String>) -> Result<Name, NameError> {
        let name = name.into();
        let ok = !name.is_empty()
            && name.len() <= MAX_LEN
            && !name.starts_with(['.', '-'])
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if ok {
            Ok(Name(name))
        } else {
            Err(NameError::Invalid(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Name, NameError> {
        Name::new(s)
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl From<Name> for String {
    fn from(n: Name) -> String {
        n.0
    }
}

impl From<&Name> for String {
    fn from(n: &Name) -> String {
        n.0.clone()
    }
}

/// Checks a name given as a string (see [`Name`]).
pub fn validate(name: &str) -> Result<(), NameError> {
    Name::new(name).map(drop)
}

/// Held for the VM's lifetime; the lock is released when this is dropped (or the process dies).
#[derive(Debug)]
pub struct NameLock {
    _file: File,
}

/// Claims `name` for a new VM.
pub fn claim(dirs: &Dirs, name: &str) -> Result<NameLock, NameError> {
    validate(name)?;
    let lock_err = |e| NameError::Lock(name.into(), e);
    crate::owner_only::create_dir(&dirs.locks()).map_err(lock_err)?;
    let file = crate::owner_only::open_lock(&dirs.locks().join(format!("name-{name}.lock")))
        .map_err(lock_err)?;
    if file.try_lock().is_err() {
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
    fn names_that_could_leave_their_directory_or_pass_for_options_are_refused() {
        let long = "x".repeat(MAX_LEN + 1);
        for bad in [
            "",
            "-x",
            ".x",
            ".",
            "..",
            "../x",
            "../../x",
            "a/b",
            "/etc",
            "/",
            "a b",
            "a\0b",
            "a\nb",
            "é",
            "a,b",
            "a:b",
            "~x",
            long.as_str(),
        ] {
            assert!(
                matches!(Name::new(bad), Err(NameError::Invalid(ref n)) if n == bad),
                "{bad:?}"
            );
            assert!(bad.parse::<Name>().is_err(), "{bad:?}");
            assert!(claim(&Dirs::new("/nonexistent"), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn good_names_read_as_themselves() {
        for good in [
            "web-1.a_b",
            "x",
            "0123456789ab",
            "cache-0011aabb",
            "A.",
            &"x".repeat(63),
        ] {
            let n: Name = good.parse().unwrap();
            assert_eq!(
                (n.as_str(), &*n, n.to_string()),
                (good, good, good.to_string())
            );
            assert_eq!(String::from(n), good);
        }
    }

    #[test]
    fn the_error_is_one_line_naming_the_input() {
        let e = Name::new("../../x").unwrap_err().to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("Invalid name \"../../x\""), "{e}");
    }
}
