//! Resolves a `user[:group]` spec (names or numeric ids) against a root's `/etc/passwd` and
//! `/etc/group`, the way podman/crun do:
//!
//! 1. empty → root (uid 0, gid 0);
//! 2. a user name must exist in passwd (`unable to find user X`); a numeric uid need not
//!    (its gid is then 0 and its home `/`);
//! 3. an explicit group (name or gid) replaces the passwd group; a group name must exist;
//! 4. supplementary groups: every group in `/etc/group` that lists the user as a member.

use crate::error::{Error, Result};
use std::path::Path;

/// The ids a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Home directory from passwd (`/` when unknown): the default `HOME`.
    pub home: String,
}

struct PwEnt {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GrEnt {
    name: String,
    gid: u32,
    members: Vec<String>,
}

fn parse_passwd(text: &str) -> Vec<PwEnt> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some(PwEnt {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).unwrap_or(&"/").to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GrEnt> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || l.starts_with('#') {
                return None;
            }
            Some(GrEnt {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// A parsed passwd and group (the warm container keeps one from before a snapshot: parsing
/// is code a restored run would otherwise translate first).
pub struct Database {
    pw: Vec<PwEnt>,
    gr: Vec<GrEnt>,
}

impl Database {
    pub fn parse(passwd: &str, group: &str) -> Database {
        Database {
            pw: parse_passwd(passwd),
            gr: parse_group(group),
        }
    }

    /// `root`/etc/passwd and `root`/etc/group (missing files are empty).
    pub fn read(root: &Path) -> Database {
        let read = |f: &str| std::fs::read_to_string(root.join(f)).unwrap_or_default();
        Database::parse(&read("etc/passwd"), &read("etc/group"))
    }

    /// Resolves `spec` (see the module docs).
    pub fn resolve(&self, spec: &str) -> Result<Ids> {
        let (pw, gr) = (&self.pw, &self.gr);
        let (user, grp) = match spec.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (spec, None),
        };
        let user = if user.is_empty() { "0" } else { user };
        let ent = match user.parse::<u32>() {
            Ok(uid) => pw.iter().find(|p| p.uid == uid),
            Err(_) => Some(
                pw.iter()
                    .find(|p| p.name == user)
                    .ok_or_else(|| Error::NoSuchUser(user.into()))?,
            ),
        };
        let uid = ent
            .map(|e| e.uid)
            .unwrap_or_else(|| user.parse().unwrap_or(0));
        let mut gid = ent.map(|e| e.gid).unwrap_or(0);
        if let Some(g) = grp.filter(|g| !g.is_empty()) {
            gid = match g.parse::<u32>() {
                Ok(n) => n,
                Err(_) => {
                    gr.iter()
                        .find(|e| e.name == g)
                        .ok_or_else(|| Error::NoSuchGroup(g.into()))?
                        .gid
                }
            };
        }
        let mut groups = Vec::new();
        if let Some(e) = ent {
            for g in gr.iter().filter(|g| g.members.contains(&e.name)) {
                if g.gid != gid && !groups.contains(&g.gid) {
                    groups.push(g.gid);
                }
            }
        }
        let home = ent
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".into());
        Ok(Ids {
            uid,
            gid,
            groups,
            home,
        })
    }
}

/// Resolves `spec` against `root`/etc/passwd and `root`/etc/group (missing files are empty).
pub fn resolve(root: &Path, spec: &str) -> Result<Ids> {
    Database::read(root).resolve(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(spec: &str, passwd: &str, group: &str) -> Result<Ids> {
        Database::parse(passwd, group).resolve(spec)
    }

    const PW: &str = "root:x:0:0:root:/root:/bin/sh\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
                      app:x:1000:1000::/home/app:/bin/sh\n";
    const GR: &str = "root:x:0:\nwheel:x:10:app,root\napp:x:1000:\naudio:x:29:app\n";

    #[test]
    fn empty_is_root() {
        let ids = resolve_text("", PW, GR).unwrap();
        assert_eq!((ids.uid, ids.gid, ids.home.as_str()), (0, 0, "/root"));
        assert_eq!(ids.groups, vec![10]);
    }

    #[test]
    fn names_and_ids() {
        let ids = resolve_text("app", PW, GR).unwrap();
        assert_eq!((ids.uid, ids.gid), (1000, 1000));
        assert_eq!(ids.groups, vec![10, 29]);
        assert_eq!(ids.home, "/home/app");
        let ids = resolve_text("1000:audio", PW, GR).unwrap();
        assert_eq!((ids.uid, ids.gid), (1000, 29));
        assert_eq!(ids.groups, vec![10]);
        let ids = resolve_text("nobody:5", PW, GR).unwrap();
        assert_eq!((ids.uid, ids.gid), (65534, 5));
    }

    #[test]
    fn unknown_numeric_uid_is_allowed() {
        let ids = resolve_text("4242", PW, GR).unwrap();
        assert_eq!((ids.uid, ids.gid, ids.home.as_str()), (4242, 0, "/"));
        let ids = resolve_text("4242:4243", "", "").unwrap();
        assert_eq!((ids.uid, ids.gid), (4242, 4243));
    }

    #[test]
    fn unknown_names_fail() {
        assert_eq!(
            resolve_text("bob", PW, GR).unwrap_err().wire(),
            "unable to find user bob"
        );
        assert_eq!(
            resolve_text("app:nogroup", PW, GR).unwrap_err().wire(),
            "unable to find group nogroup"
        );
    }
}
