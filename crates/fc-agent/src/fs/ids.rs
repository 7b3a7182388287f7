//! Who a file request acts as: the user's ids taken by the worker thread for the operation
//! ([`AsUser`]), and the names of the owners it reports ([`Names`]), both from the
//! container's own /etc/passwd and /etc/group.

use super::{check, show};
use crate::users::Ids;
use fcvm_proto::{FsEntry, FsKind};
use std::io;

/// uid and gid → names, from the container's /etc/passwd and /etc/group.
pub struct Names {
    users: Vec<(u32, String)>,
    groups: Vec<(u32, String)>,
}

impl Names {
    /// `read` gives a small file of the container's root (`Root::read_small`).
    pub fn parse(read: impl Fn(&str) -> Option<String>) -> Names {
        let table = |f: &str| -> Vec<(u32, String)> {
            read(f)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    Some((f.get(2)?.parse().ok()?, f[0].to_string()))
                })
                .collect()
        };
        Names {
            users: table("/etc/passwd"),
            groups: table("/etc/group"),
        }
    }

    pub(super) fn entry(
        &self,
        comps: &[String],
        st: &libc::stat,
        target: Option<String>,
        kind: FsKind,
    ) -> FsEntry {
        let name = |t: &[(u32, String)], id: u32| {
            t.iter()
                .find(|(i, _)| *i == id)
                .map_or_else(|| id.to_string(), |(_, n)| n.clone())
        };
        FsEntry {
            path: show(comps),
            kind,
            size: st.st_size as u64,
            mode: st.st_mode,
            uid: st.st_uid,
            gid: st.st_gid,
            owner: name(&self.users, st.st_uid),
            group: name(&self.groups, st.st_gid),
            mtime_sec: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
            symlink_target: target,
        }
    }
}

/// The calling thread's filesystem ids and groups set to a user's until dropped (only this
/// thread: raw system calls, not libc's process-wide wrappers). Root's request changes nothing.
pub struct AsUser(bool);

impl AsUser {
    pub fn enter(ids: &Ids) -> io::Result<AsUser> {
        if ids.uid == 0 && ids.gid == 0 {
            return Ok(AsUser(false));
        }
        let guard = AsUser(true); // undoes a partial change too
                                  // SAFETY: `groups` is a valid array of its length for the call.
        let r =
            unsafe { libc::syscall(libc::SYS_setgroups, ids.groups.len(), ids.groups.as_ptr()) };
        check(r as libc::c_int)?;
        // SAFETY: plain id-setting system calls of this thread. setfs*id report no error:
        // the ids are read back to check them.
        unsafe {
            libc::syscall(libc::SYS_setfsgid, ids.gid);
            libc::syscall(libc::SYS_setfsuid, ids.uid);
            let uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
            let gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
            if (uid, gid) != (ids.uid, ids.gid) {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
        }
        Ok(guard)
    }
}

impl Drop for AsUser {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: back to root's ids on this thread (the pool reuses it).
            unsafe {
                libc::syscall(libc::SYS_setfsuid, 0);
                libc::syscall(libc::SYS_setfsgid, 0);
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>());
            }
        }
    }
}
