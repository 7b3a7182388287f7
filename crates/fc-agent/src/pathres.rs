//! Finds a command's executable inside a root directory (the container's rootfs or the VM's
//! `/`) before anything is spawned, so the host gets podman's exact error kinds:
//!
//! 1. a name with a `/` is looked up as is (relative names against the working directory);
//!    a bare name is searched in the `PATH` of the process's environment;
//! 2. symlinks are followed *inside* the root: an absolute target is relative to the root, and
//!    `..` never climbs above it;
//! 3. the first regular file with an execute bit wins; if something was found but none was
//!    executable (no x bit, or a directory) the answer is `NotExecutable`, else `NotFound`.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use fcvm_proto::DEFAULT_PATH;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Path inside the root (`/bin/busybox`) and on this system (`<root>/bin/busybox`).
    Found {
        inside: String,
        host: PathBuf,
    },
    NotExecutable,
    NotFound,
}

/// Resolves `path` (absolute, or relative to `cwd`) inside `root`, following every symlink.
/// Returns the path inside the root with no symlinks left, or `None` if a component is missing
/// or the links loop.
pub fn resolve_in_root(root: &Path, cwd: &str, path: &str) -> Option<Vec<String>> {
    let mut todo: VecDeque<String> = VecDeque::new();
    let start = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{cwd}/{path}")
    };
    todo.extend(start.split('/').map(str::to_string));
    let mut cur: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(comp) = todo.pop_front() {
        match comp.as_str() {
            "" | "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let host = host_path(root, &cur).join(&comp);
        let meta = std::fs::symlink_metadata(&host).ok()?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > 40 {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            let target = target.to_string_lossy();
            if target.starts_with('/') {
                cur.clear();
            }
            for c in target.split('/').rev() {
                todo.push_front(c.to_string());
            }
        } else {
            if !todo.iter().all(|c| c.is_empty() || c == ".") && !meta.is_dir() {
                return None;
            }
            cur.push(comp);
        }
    }
    Some(cur)
}

fn host_path(root: &Path, comps: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(c);
    }
    p
}

/// The value of `PATH` in `env` (`KEY=VALUE` entries), or [`DEFAULT_PATH`].
pub fn path_of(env: &[String]) -> String {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH)
        .to_string()
}

/// Looks `name` up inside `root` as `execvp` would (see the module docs).
pub fn find_executable(root: &Path, name: &str, path_env: &str, cwd: &str) -> Lookup {
    let candidates: Vec<String> = if name.contains('/') {
        vec![name.to_string()]
    } else {
        path_env
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| format!("{d}/{name}"))
            .collect()
    };
    let mut seen = false;
    for cand in candidates {
        let Some(comps) = resolve_in_root(root, cwd, &cand) else {
            continue;
        };
        let host = host_path(root, &comps);
        let Ok(meta) = std::fs::metadata(&host) else {
            continue;
        };
        seen = true;
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            return Lookup::Found {
                inside: format!("/{}", comps.join("/")),
                host,
            };
        }
    }
    if seen {
        Lookup::NotExecutable
    } else {
        Lookup::NotFound
    }
}

/// What [`find_executable`] answers for every bare name found in the directories of `path_env`
/// (at most `limit` names), from one listing of each directory: a name is resolved only in
/// the directories that hold it, which gives the same answer as searching them all.
pub fn index(root: &Path, path_env: &str, limit: usize) -> HashMap<String, Lookup> {
    let dirs: Vec<&str> = path_env.split(':').filter(|d| !d.is_empty()).collect();
    // name -> the PATH entries that hold it, in PATH order.
    let mut holders: HashMap<String, Vec<&str>> = HashMap::new();
    for dir in &dirs {
        let Some(comps) = resolve_in_root(root, "/", dir) else {
            continue;
        };
        let Ok(entries) = std::fs::read_dir(host_path(root, &comps)) else {
            continue;
        };
        for name in entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
        {
            if holders.len() >= limit && !holders.contains_key(&name) {
                continue;
            }
            let h = holders.entry(name).or_default();
            if !h.contains(dir) {
                h.push(dir);
            }
        }
    }
    holders
        .into_iter()
        .map(|(name, h)| {
            let found = find_executable(root, &name, &h.join(":"), "/");
            (name, found)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "fc-agent-pathres-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["bin", "usr/bin", "usr/lib", "opt/app", "data"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let exe = root.join("bin/busybox");
        std::fs::write(&exe, b"x").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("data/plain"), b"x").unwrap();
        symlink("busybox", root.join("bin/sh")).unwrap();
        // absolute target: must resolve inside the root, not on the host
        symlink("/bin/busybox", root.join("usr/bin/env")).unwrap();
        symlink("../../bin/busybox", root.join("usr/lib/rel")).unwrap();
        symlink("/../../../bin/busybox", root.join("usr/bin/climb")).unwrap();
        symlink("/data/plain", root.join("usr/bin/plain")).unwrap();
        symlink("loop2", root.join("usr/bin/loop1")).unwrap();
        symlink("loop1", root.join("usr/bin/loop2")).unwrap();
        symlink("/usr/bin", root.join("opt/app/bindir")).unwrap();
        root
    }

    #[test]
    fn path_search_and_symlinks() {
        let root = tree();
        let p = "/usr/bin:/bin";
        let found = |n: &str| match find_executable(&root, n, p, "/") {
            Lookup::Found { inside, host } => {
                assert!(host.starts_with(&root));
                inside
            }
            other => panic!("{n}: {other:?}"),
        };
        assert_eq!(found("sh"), "/bin/busybox");
        assert_eq!(found("env"), "/bin/busybox");
        assert_eq!(found("climb"), "/bin/busybox");
        assert_eq!(found("/usr/lib/rel"), "/bin/busybox");
        assert_eq!(found("/opt/app/bindir/env"), "/bin/busybox");
        assert_eq!(found("../bin/sh"), "/bin/busybox");
        assert_eq!(
            find_executable(&root, "bindir/env", p, "/opt/app"),
            find_executable(&root, "/usr/bin/env", p, "/")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn errors() {
        let root = tree();
        let p = "/usr/bin:/bin";
        assert_eq!(find_executable(&root, "nope", p, "/"), Lookup::NotFound);
        assert_eq!(find_executable(&root, "/nope", p, "/"), Lookup::NotFound);
        assert_eq!(find_executable(&root, "loop1", p, "/"), Lookup::NotFound);
        assert_eq!(
            find_executable(&root, "plain", p, "/"),
            Lookup::NotExecutable
        );
        assert_eq!(
            find_executable(&root, "/data", p, "/"),
            Lookup::NotExecutable
        );
        // a file used as a directory
        assert_eq!(
            find_executable(&root, "/data/plain/x", p, "/"),
            Lookup::NotFound
        );
        // not on the PATH given
        assert_eq!(
            find_executable(&root, "sh", "/usr/bin", "/"),
            Lookup::NotFound
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn index_answers_as_a_search_does() {
        let root = tree();
        std::fs::write(root.join("usr/bin/sh"), b"not executable").unwrap();
        for p in [
            "/usr/bin:/bin",
            "/bin:/usr/bin",
            "/opt/app/bindir:/nope:/bin",
        ] {
            let idx = index(&root, p, 1000);
            assert!(idx.contains_key("sh") && idx.contains_key("loop1"), "{p}");
            for (name, found) in &idx {
                assert_eq!(
                    found,
                    &find_executable(&root, name, p, "/"),
                    "{name} on {p}"
                );
            }
        }
        // "sh" in /usr/bin is not executable: the search goes on to /bin's.
        assert!(matches!(
            index(&root, "/usr/bin:/bin", 1000)["sh"],
            Lookup::Found { .. }
        ));
        assert_eq!(index(&root, "/usr/bin:/bin", 2).len(), 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn path_from_env() {
        assert_eq!(path_of(&["A=1".into()]), DEFAULT_PATH);
        assert_eq!(path_of(&["PATH=/x".into(), "B=2".into()]), "/x");
    }
}
