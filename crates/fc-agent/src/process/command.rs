//! The command of a `Start`, checked before anything runs: its user, environment, directory
//! and executable, looked up inside the root it will run in (the container's, or the VM's
//! `/`), so that the host gets podman's error kinds and texts.

use crate::error::{Error, Result};
use crate::oci::ProcConfig;
use crate::pathres::{find_executable, path_of, Lookup, DEFAULT_PATH};
use crate::paths::ROOTFS;
use crate::users::Ids;
use fcvm_proto::{ProcessSpec, Target};
use std::path::PathBuf;

/// A command whose user and executable exist.
pub struct Command {
    /// argv[0], as the host sent it.
    pub name: String,
    pub ids: Ids,
    /// The full environment ([`full_env`]).
    pub env: Vec<String>,
    /// The working directory ("/" when none was given).
    pub cwd: String,
    /// The executable inside its root, symlinks resolved (what the warm stand-in execs).
    pub inside: String,
    /// The same file as the agent sees it (what a VM process execs).
    pub host: PathBuf,
    /// What crun or the stand-in runs.
    pub process: ProcConfig,
}

/// Checks `spec` for `target` (see the module docs).
pub fn check(spec: &ProcessSpec, target: &Target) -> Result<Command> {
    let name = spec.args.first().ok_or(Error::NoCommand)?;
    let root = PathBuf::from(match target {
        Target::Vm => "/".to_string(),
        Target::Container | Target::ContainerExec => ROOTFS.to_string(),
        Target::PodContainer { id, .. } | Target::PodExec { id } => crate::pods::root_of(id)?,
    });
    let root = root.as_path();
    // Before the first Start after an image-cache restore, what the agent looked up before
    // the snapshot still holds (see crate::warm::Lookups); a --vm process could change it.
    let memo = match target {
        Target::Container => crate::warm::lookups(),
        _ => {
            crate::warm::forget_lookups();
            None
        }
    };
    let ids = match &memo {
        Some(m) => m.user(&spec.user),
        None => crate::users::resolve(root, &spec.user),
    }?;
    let env = full_env(spec, &ids.home);
    let cwd = if spec.cwd.is_empty() {
        "/".to_string()
    } else {
        spec.cwd.clone()
    };
    let path = path_of(&env);
    let found = memo
        .and_then(|m| m.exe(name, &path, &cwd))
        .unwrap_or_else(|| find_executable(root, name, &path, &cwd));
    let found = match found {
        // The container's bind mounts (`--map`, `--disk`) exist only in its own mount
        // namespace, not under the rootfs the agent looks in: a path below one is looked up
        // in the bind's source instead.
        Lookup::NotFound if matches!(target, Target::Container | Target::ContainerExec) => {
            let binds = container_binds();
            in_binds(&binds, name, &path, &cwd).unwrap_or(Lookup::NotFound)
        }
        found => found,
    };
    let (inside, host) = match found {
        Lookup::Found { inside, host } => (inside, host),
        Lookup::NotExecutable => {
            let name = name.clone();
            let target = target.clone();
            return Err(Error::NotExecutable { name, target });
        }
        Lookup::NotFound => {
            let name = name.clone();
            let target = target.clone();
            return Err(Error::NotFound { name, target });
        }
    };
    let process = ProcConfig {
        args: spec.args.clone(),
        env: env.clone(),
        cwd: cwd.clone(),
        uid: ids.uid,
        gid: ids.gid,
        groups: ids.groups.clone(),
        privileged: spec.privileged,
    };
    Ok(Command {
        name: name.clone(),
        ids,
        env,
        cwd,
        inside,
        host,
        process,
    })
}

/// The environment a process gets: the host's entries plus PATH, HOME (and TERM on a tty).
pub fn full_env(spec: &ProcessSpec, home: &str) -> Vec<String> {
    let mut env = spec.env.clone();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if spec.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    env
}

/// The container's bind mounts as (source in the VM, destination in the container).
fn container_binds() -> Vec<(PathBuf, String)> {
    let disks = crate::disks::binds()
        .iter()
        .map(|(at, dest)| (PathBuf::from(at), dest.clone()));
    let maps = crate::fuse::binds()
        .into_iter()
        .map(|b| (PathBuf::from(b.source), b.guest));
    disks.chain(maps).collect()
}

/// Looks `name` (a path: bare names are searched in `PATH` inside the rootfs only) up below
/// the bind mount whose destination holds it. Symlinks are followed inside that bind's
/// source, as if it were the root: a link leaving the bind is not followed to the rootfs.
fn in_binds(binds: &[(PathBuf, String)], name: &str, path: &str, cwd: &str) -> Option<Lookup> {
    if !name.contains('/') {
        return None;
    }
    let full = if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{}/{name}", cwd.trim_end_matches('/'))
    };
    binds.iter().find_map(|(source, dest)| {
        let rest = full.strip_prefix(dest.trim_end_matches('/'))?;
        if !rest.starts_with('/') {
            return None;
        }
        match find_executable(source, rest, path, "/") {
            Lookup::Found { inside, host } => Some(Lookup::Found {
                inside: format!("{}{inside}", dest.trim_end_matches('/')),
                host,
            }),
            other => Some(other),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults() {
        let spec = ProcessSpec {
            env: vec!["A=1".into(), "HOME=/x".into()],
            tty: true,
            ..Default::default()
        };
        let env = full_env(&spec, "/root");
        assert_eq!(
            env,
            [
                "A=1",
                "HOME=/x",
                &format!("PATH={DEFAULT_PATH}"),
                "TERM=xterm"
            ]
        );
    }

    #[test]
    fn a_path_below_a_bind_is_looked_up_in_its_source() {
        use std::os::unix::fs::PermissionsExt;
        let src = std::env::temp_dir().join(format!("fc-agent-binds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(src.join("bin")).unwrap();
        let exe = src.join("bin/prog");
        std::fs::write(&exe, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(src.join("plain"), "").unwrap();
        let binds = vec![(src.clone(), "/cb".to_string())];
        let path = DEFAULT_PATH;
        assert_eq!(
            super::in_binds(&binds, "/cb/bin/prog", path, "/"),
            Some(Lookup::Found {
                inside: "/cb/bin/prog".into(),
                host: exe.clone()
            })
        );
        assert_eq!(
            super::in_binds(&binds, "bin/prog", path, "/cb"),
            Some(Lookup::Found {
                inside: "/cb/bin/prog".into(),
                host: exe
            })
        );
        assert_eq!(
            super::in_binds(&binds, "/cb/plain", path, "/"),
            Some(Lookup::NotExecutable)
        );
        assert_eq!(super::in_binds(&binds, "/cbx/bin/prog", path, "/"), None);
        assert_eq!(super::in_binds(&binds, "prog", path, "/cb/bin"), None);
        std::fs::remove_dir_all(&src).unwrap();
    }
}
