//! The container's OCI runtime config, as podman would generate it: pid/ipc/mount
//! namespaces (the VM's network and hostname are shared: the VM exists for this one container,
//! and one `sethostname` then renames both, which a restore does on every run), the standard
//! mounts, podman's default capabilities, `RLIMIT_NOFILE` 1048576, masked and read-only /proc
//! and /sys paths.
//! `--privileged` ([`ProcConfig::privileged`]) gives every capability, the VM's devices, no
//! masked or read-only paths and a writable /sys, as podman does ([`crate::privileged`]).
//! `crun run` reads [`spec`] from /run/fcvm/bundle/config.json; `crun exec --process` reads a
//! [`process`] alone. A pod's further containers get [`pod_spec`]: the same, rooted at their
//! map, joining the first container's network, IPC and UTS namespaces (`crate::pods`).

use crate::error::{Error, Result};
use crate::paths::{ETC, ETC_FILES, ROOTFS};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPersonalityBuilder, LinuxPersonalityDomain,
    LinuxResourcesBuilder, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, Process,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::path::Path;

/// The error of building part `what` of the config.
fn e(what: &'static str) -> impl FnOnce(oci_spec::OciSpecError) -> Error {
    move |err| Error::OciConfig(what, err)
}

/// podman's default capability set.
const CAPS: [Capability; 11] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fowner,
    Capability::Fsetid,
    Capability::Kill,
    Capability::NetBindService,
    Capability::Setfcap,
    Capability::Setgid,
    Capability::Setpcap,
    Capability::Setuid,
    Capability::SysChroot,
];

/// The process part of a config (also `crun exec --process`'s JSON, and what the warm
/// container's stand-in becomes).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ProcConfig {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Every capability (and, for [`spec`], the privileged container).
    pub privileged: bool,
}

/// The OCI process for `p` (terminal off: a pty, if any, is our own stdio).
pub fn process(p: &ProcConfig) -> Result<Process> {
    let all: std::collections::HashSet<Capability> = if p.privileged {
        crate::privileged::all_caps()
    } else {
        CAPS.into_iter().collect()
    };
    let granted = if p.uid == 0 {
        all.clone()
    } else {
        Default::default()
    };
    let caps = LinuxCapabilitiesBuilder::default()
        .bounding(all)
        .effective(granted.clone())
        .permitted(granted)
        .inheritable(std::collections::HashSet::new())
        .ambient(std::collections::HashSet::new())
        .build()
        .map_err(e("capabilities"))?;
    let mut user = UserBuilder::default().uid(p.uid).gid(p.gid);
    if !p.groups.is_empty() {
        user = user.additional_gids(p.groups.clone());
    }
    let rlimit = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(1_048_576u64)
        .soft(1_048_576u64)
        .build()
        .map_err(e("rlimit"))?;
    ProcessBuilder::default()
        .terminal(false)
        .user(user.build().map_err(e("user"))?)
        .args(p.args.clone())
        .env(p.env.clone())
        .cwd(if p.cwd.is_empty() { "/" } else { &p.cwd })
        .capabilities(caps)
        .rlimits(vec![rlimit])
        .build()
        .map_err(e("process"))
}

fn mnt(dest: &str, typ: &str, src: &str, opts: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(src)
        .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(e("mount"))
}

/// The container's runtime config.
pub fn spec(p: &ProcConfig) -> Result<Spec> {
    let own = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect::<Result<Vec<_>, _>>()
    .map_err(e("namespace"))?;
    build(p, ROOTFS, crate::disks::binds(), &crate::fuse::binds(), own)
}

/// A pod container's runtime config (`crate::pods`): the first container's defaults, rooted
/// at `root`, in the network, IPC and UTS namespaces of process `join` (the first
/// container's), with pid and mount namespaces of its own; without the first container's
/// disks and maps, with `binds` (its own maps, `PodRequest{Binds}`) instead.
pub fn pod_spec(
    p: &ProcConfig,
    root: &str,
    join: i32,
    binds: &[crate::fuse::Bind],
) -> Result<Spec> {
    let own = [LinuxNamespaceType::Pid, LinuxNamespaceType::Mount]
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build());
    let joined = [
        (LinuxNamespaceType::Network, "net"),
        (LinuxNamespaceType::Ipc, "ipc"),
        (LinuxNamespaceType::Uts, "uts"),
    ]
    .into_iter()
    .map(|(t, name)| {
        LinuxNamespaceBuilder::default()
            .typ(t)
            .path(format!("/proc/{join}/ns/{name}"))
            .build()
    });
    let namespaces = own
        .chain(joined)
        .collect::<Result<Vec<_>, _>>()
        .map_err(e("namespace"))?;
    build(p, root, &[], binds, namespaces)
}

/// The config rooted at `root` with `namespaces`, `disks` (source, destination) and `maps`
/// bound in, the maps last (over anything the defaults put there).
fn build(
    p: &ProcConfig,
    root: &str,
    disks: &[(String, String)],
    maps: &[crate::fuse::Bind],
    namespaces: Vec<oci_spec::runtime::LinuxNamespace>,
) -> Result<Spec> {
    // Privileged: /sys and its cgroup tree writable (podman).
    let sys_ro: &[&str] = if p.privileged { &[] } else { &["ro"] };
    let mut mounts = vec![
        mnt("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mnt(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mnt(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mnt(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mnt(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mnt(
            "/sys",
            "sysfs",
            "sysfs",
            &[&["nosuid", "noexec", "nodev"], sys_ro].concat(),
        )?,
        mnt(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &[&["nosuid", "noexec", "nodev", "relatime"], sys_ro].concat(),
        )?,
    ];
    for f in ETC_FILES {
        let src = format!("{ETC}/{f}");
        mounts.push(mnt(
            &format!("/etc/{f}"),
            "bind",
            &src,
            &["rbind", "rprivate"],
        )?);
    }
    for (src, dest) in disks {
        mounts.push(mnt(dest, "bind", src, &["rbind", "rprivate"])?);
    }
    for b in maps {
        // Never a set-uid file or device node from the host.
        let ro: &[&str] = if b.read_only { &["ro"] } else { &[] };
        let opts = [&["rbind", "rprivate", "nosuid", "nodev"], ro].concat();
        mounts.push(mnt(&b.guest, "bind", &b.source, &opts)?);
    }
    let devices_rule = LinuxDeviceCgroupBuilder::default()
        .allow(p.privileged)
        .access("rwm")
        .build()
        .map_err(e("devices"))?;
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // crun itself runs with a fixed address layout (reaper::Cmd::fixed_layout); the
    // personality it sets from here gives the container's processes their ASLR back.
    let personality = LinuxPersonalityBuilder::default()
        .domain(LinuxPersonalityDomain::PerLinux)
        .build()
        .map_err(e("personality"))?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .personality(personality)
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![devices_rule])
                .build()
                .map_err(e("resources"))?,
        )
        .masked_paths(strs(&[
            "/proc/acpi",
            "/proc/asound",
            "/proc/kcore",
            "/proc/keys",
            "/proc/latency_stats",
            "/proc/timer_list",
            "/proc/timer_stats",
            "/proc/sched_debug",
            "/sys/firmware",
            "/proc/scsi",
        ]))
        .readonly_paths(strs(&[
            "/proc/bus",
            "/proc/fs",
            "/proc/irq",
            "/proc/sys",
            "/proc/sysrq-trigger",
        ]))
        .build()
        .map_err(e("linux"))?;
    if p.privileged {
        linux.set_masked_paths(None);
        linux.set_readonly_paths(None);
        linux.set_devices(Some(crate::privileged::devices(Path::new("/dev"))));
    }
    let mut spec = SpecBuilder::default()
        .version("1.0.0")
        .root(
            RootBuilder::default()
                .path(root)
                .readonly(false)
                .build()
                .map_err(e("root"))?,
        )
        .process(process(p)?)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(e("spec"))?;
    // oci-spec's default names the host "youki"; with no UTS namespace crun refuses any name.
    spec.set_hostname(None);
    Ok(spec)
}

/// Writes `value` as JSON to `path` (creating the parent).
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::Mkdir(dir.into(), e))?;
    }
    let text = serde_json::to_vec_pretty(value).map_err(|e| Error::Json(path.into(), e))?;
    std::fs::write(path, text).map_err(|e| Error::Write(path.into(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pod container's config: its own root, pid and mount namespaces of its own, the
    /// first container's network, IPC and UTS by path; the same defaults otherwise.
    #[test]
    fn a_pod_container_joins_the_first_ones_namespaces() {
        let p = ProcConfig {
            args: vec!["sh".into()],
            ..Default::default()
        };
        let binds = [
            crate::fuse::Bind {
                source: "/run/fcvm-maps/4".into(),
                guest: "/data".into(),
                read_only: false,
            },
            crate::fuse::Bind {
                source: "/run/fcvm-maps/5".into(),
                guest: "/conf".into(),
                read_only: true,
            },
        ];
        let spec = pod_spec(&p, "/run/fcvm-maps/3", 42, &binds).unwrap();
        let v = serde_json::to_value(spec).unwrap();
        assert_eq!(v["root"]["path"], "/run/fcvm-maps/3");
        assert!(v.get("hostname").is_none(), "the UTS namespace is joined");
        let ns: Vec<(String, Option<String>)> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let path = n.get("path").and_then(|p| p.as_str()).map(String::from);
                (n["type"].as_str().unwrap().to_string(), path)
            })
            .collect();
        let own = |t: &str| (t.to_string(), None);
        let joined = |t: &str, f: &str| (t.to_string(), Some(format!("/proc/42/ns/{f}")));
        assert_eq!(
            ns,
            [
                own("pid"),
                own("mount"),
                joined("network", "net"),
                joined("ipc", "ipc"),
                joined("uts", "uts"),
            ]
        );
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert!(dests.contains(&"/proc") && dests.contains(&"/etc/hostname"));
        assert_eq!(v["linux"]["maskedPaths"][0], "/proc/acpi");
        // Its binds come last (over anything the defaults put there), read-only as asked.
        let mounts = v["mounts"].as_array().unwrap();
        let [.., data, conf] = &mounts[..] else {
            panic!("{mounts:?}")
        };
        assert_eq!(
            (&data["destination"], &data["source"], &data["type"]),
            (&"/data".into(), &"/run/fcvm-maps/4".into(), &"bind".into())
        );
        let opts = |m: &serde_json::Value| m["options"].as_array().unwrap().clone();
        assert!(!opts(data).contains(&"ro".into()));
        assert_eq!(conf["destination"], "/conf");
        assert!(opts(conf).contains(&"ro".into()) && opts(conf).contains(&"nosuid".into()));
    }

    #[test]
    fn config_has_what_podman_would_generate() {
        let p = ProcConfig {
            args: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: String::new(),
            uid: 1000,
            gid: 1000,
            groups: vec![10],
            privileged: false,
        };
        let v = serde_json::to_value(spec(&p).unwrap()).unwrap();
        assert_eq!(v["root"]["path"], ROOTFS);
        assert_eq!(v["root"]["readonly"], false);
        assert!(
            v.get("hostname").is_none(),
            "the VM's hostname is the container's"
        );
        assert_eq!(v["process"]["cwd"], "/");
        assert_eq!(v["process"]["terminal"], false);
        assert_eq!(v["process"]["user"]["uid"], 1000);
        assert_eq!(v["process"]["user"]["additionalGids"][0], 10);
        assert_eq!(v["process"]["args"][2], "echo hi");
        assert_eq!(v["process"]["rlimits"][0]["type"], "RLIMIT_NOFILE");
        assert_eq!(v["process"]["rlimits"][0]["hard"], 1_048_576);
        let ns: Vec<&str> = v["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "mount"]);
        assert_eq!(v["linux"]["personality"]["domain"], "LINUX");
        let dests: Vec<&str> = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["destination"].as_str().unwrap())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hostname",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/etc/machine-id"
            ]
        );
        let caps = &v["process"]["capabilities"];
        assert_eq!(caps["bounding"].as_array().unwrap().len(), 11);
        assert!(caps["bounding"]
            .as_array()
            .unwrap()
            .contains(&"CAP_NET_BIND_SERVICE".into()));
        // non-root: bounding only
        assert_eq!(caps["effective"].as_array().unwrap().len(), 0);
        assert!(v["linux"]["maskedPaths"]
            .as_array()
            .unwrap()
            .contains(&"/proc/kcore".into()));
    }

    #[test]
    fn privileged_gets_everything() {
        let p = ProcConfig {
            args: vec!["true".into()],
            privileged: true,
            ..Default::default()
        };
        let v = serde_json::to_value(spec(&p).unwrap()).unwrap();
        let caps = &v["process"]["capabilities"];
        assert!(caps["effective"]
            .as_array()
            .unwrap()
            .contains(&"CAP_SYS_ADMIN".into()));
        assert!(caps["bounding"].as_array().unwrap().len() > 40);
        assert_eq!(v["linux"]["resources"]["devices"][0]["allow"], true);
        assert!(v["linux"].get("maskedPaths").is_none());
        assert!(v["linux"]["devices"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "/dev/null"));
        let sys = v["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/sys")
            .unwrap();
        assert!(!sys["options"].as_array().unwrap().contains(&"ro".into()));
    }

    #[test]
    fn root_gets_effective_caps() {
        let p = ProcConfig {
            args: vec!["true".into()],
            ..Default::default()
        };
        let v = serde_json::to_value(process(&p).unwrap()).unwrap();
        assert_eq!(v["capabilities"]["effective"].as_array().unwrap().len(), 11);
    }
}
