//! What `--privileged` adds to the container's OCI config (podman's rules; the VM is the
//! boundary, see docs/run.md): every capability the kernel has and every device of the VM.

use oci_spec::runtime::{Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};
use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Every capability oci-spec names (crun drops those the kernel does not know).
const ALL: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETGID",
    "SETFCAP",
    "SETPCAP",
    "SETUID",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "SYSLOG",
    "WAKE_ALARM",
];

/// Every capability.
pub fn all_caps() -> HashSet<Capability> {
    ALL.iter()
        .filter_map(|c| serde_json::from_value(serde_json::Value::String(format!("CAP_{c}"))).ok())
        .collect()
}

/// The VM's character and block devices under `dev` (recursively; not the pseudo-terminals,
/// whose /dev/pts the container has its own instance of), as crun creates them in the
/// container's /dev.
pub fn devices(dev: &Path) -> Vec<LinuxDevice> {
    let mut out = vec![];
    walk(dev, dev, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<LinuxDevice>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(md) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let ft = md.file_type();
        if ft.is_dir() {
            if !matches!(e.file_name().to_str(), Some("pts" | "shm" | "mqueue")) {
                walk(root, &path, out);
            }
            continue;
        }
        let typ = if ft.is_char_device() {
            LinuxDeviceType::C
        } else if ft.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        // /dev/console and /dev/ptmx are crun's own (the terminal and devpts' ptmx).
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if matches!(rel.to_str(), Some("console" | "ptmx")) {
            continue;
        }
        let rdev = md.rdev();
        let dev = LinuxDeviceBuilder::default()
            .path(Path::new("/dev").join(rel))
            .typ(typ)
            .major(i64::from(libc::major(rdev)))
            .minor(i64::from(libc::minor(rdev)))
            .file_mode(md.mode() & 0o7777)
            .uid(md.uid())
            .gid(md.gid())
            .build();
        if let Ok(d) = dev {
            out.push(d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_and_the_null_device() {
        assert_eq!(all_caps().len(), ALL.len());
        let devs = devices(Path::new("/dev"));
        let null = devs
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null");
        assert_eq!((null.major(), null.minor()), (1, 3));
        assert!(devs.iter().all(|d| !d.path().starts_with("/dev/pts")));
    }
}
