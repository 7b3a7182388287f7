//! The bundle's OCI runtime spec → what fcvm runs: the container's process (args, env, cwd,
//! user, terminal), the VM's size (memory limit → RAM, CPU quota → vCPUs) and whether it is
//! privileged. What fcvm cannot honour is refused here, before anything starts, with one line
//! naming the field (docs/containerd.md lists both). A CRI pod's containers ([`Role`]) have
//! rules of their own: the pod's namespaces are the VM's, the CRI's per-pod files are the
//! VM's own, and a later container cannot resize the VM its sandbox sized; a later
//! container's binds of host directories reach it as maps ([`binds`]), as a lone
//! container's do.

use fcvm_proto::ProcessSpec;
use oci_spec::runtime::{Capability, LinuxNamespaceType, Process, Spec};

use crate::pod::Role;
use fcvm::map::Map;

mod binds;

/// VM size when the spec sets no limits (as `fcvm podman run`'s defaults).
pub const DEFAULT_CPUS: u32 = 1;
pub const DEFAULT_MEM_MIB: u32 = 512;
/// The guest's kernel, agent and crun need this much besides the container.
pub const MIN_MEM_MIB: u32 = 128;

/// Mounts the guest's container runtime makes itself, as every OCI runtime does: a spec
/// listing them (with these types) is honoured; any other mount is refused.
const STANDARD_MOUNTS: &[(&str, &[&str])] = &[
    ("/proc", &["proc"]),
    ("/dev", &["tmpfs"]),
    ("/dev/pts", &["devpts"]),
    ("/dev/shm", &["tmpfs", "shm"]),
    ("/dev/mqueue", &["mqueue"]),
    ("/sys", &["sysfs"]),
    ("/sys/fs/cgroup", &["cgroup", "cgroup2"]),
    ("/run", &["tmpfs"]),
];

/// Bind mounts containerd's CRI plugin adds to a pod's containers (the pod's shared
/// `/dev/shm` and its name and DNS files, the kubelet's termination-message file): in fcvm
/// the VM's own serve the pod (the same files for all its containers), so these are
/// accepted and not applied.
const CRI_MOUNTS: &[&str] = &[
    "/dev/shm",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/dev/termination-log",
];

/// What the container asks for, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub process: ProcessSpec,
    pub cpus: u32,
    pub mem_mib: u32,
    pub hostname: String,
    pub privileged: bool,
    /// The container's binds of host directories, in the spec's order: a pod member's are
    /// added to its sandbox's VM, a lone container's VM is launched with them (never a
    /// sandbox's: the pause container has no use for one).
    pub binds: Vec<Map>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("fcvm cannot honour {field}: {why}")]
pub struct Refused {
    pub field: String,
    pub why: String,
}

fn refuse(field: impl Into<String>, why: impl Into<String>) -> Refused {
    Refused {
        field: field.into(),
        why: why.into(),
    }
}

/// Checks `spec` and turns it into a [`Plan`]; `stdin` says whether containerd gave stdin.
pub fn plan(spec: &Spec, stdin: bool, role: &Role) -> Result<Plan, Refused> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| refuse("process", "the spec has none"))?;
    let privileged = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .is_some_and(|b| b.contains(&Capability::SysAdmin));
    let mut process = process_spec(process, stdin)?;
    process.privileged = privileged;
    if spec.hooks().is_some() {
        return Err(refuse("hooks", "they would run on the host, not in the VM"));
    }
    // A pod's sandbox (pause) container gets a read-only root from containerd, not from the
    // user: its process writes nothing, and its root is the VM's first container's.
    if *role != Role::Sandbox
        && spec
            .root()
            .as_ref()
            .is_some_and(|r| r.readonly() == Some(true))
    {
        return Err(refuse(
            "root.readonly",
            "the container's root is always writable (an overlay in the VM)",
        ));
    }
    let mut host_binds = vec![];
    for m in spec.mounts().iter().flatten() {
        let dest = m.destination().to_string_lossy();
        let typ = m.typ().clone().unwrap_or_default();
        let standard = STANDARD_MOUNTS
            .iter()
            .any(|(d, types)| *d == dest && types.contains(&typ.as_str()));
        let cri = *role != Role::Alone && typ == "bind" && CRI_MOUNTS.contains(&&*dest);
        if standard || cri {
            continue;
        }
        let src = m
            .source()
            .as_ref()
            .map(|s| format!(" from {}", s.display()))
            .unwrap_or_default();
        let field = format!("mount {dest} ({typ}{src})");
        match role {
            Role::Sandbox => {
                return Err(refuse(
                    field,
                    "a pod's sandbox container takes no host paths or extra file systems",
                ))
            }
            _ if binds::is_bind(m) => {
                let bind = binds::host_bind(m, &field)?;
                // crun would mount both, the last hiding the first: say so instead.
                if host_binds.iter().any(|b: &Map| b.guest == bind.guest) {
                    return Err(refuse(field, "another bind has this destination"));
                }
                host_binds.push(bind);
            }
            _ => {
                return Err(refuse(
                    field,
                    "only binds of host directories reach the VM (no other file system)",
                ))
            }
        }
    }
    if host_binds.len() >= fcvm_proto::MAX_MAPS {
        return Err(refuse(
            "mounts",
            format!(
                "at most {} binds of host directories",
                fcvm_proto::MAX_MAPS - 1
            ),
        ));
    }
    let (mut cpus, mut mem_mib) = (DEFAULT_CPUS, DEFAULT_MEM_MIB);
    if let Some(linux) = spec.linux() {
        let namespaces = linux.namespaces().clone().unwrap_or_default();
        for ns in &namespaces {
            if ns.typ() == LinuxNamespaceType::User {
                return Err(refuse("user namespace", "not supported in the VM"));
            }
            let Some(p) = ns.path() else { continue };
            let field = format!("linux.namespaces {:?} path {}", ns.typ(), p.display());
            match (role, ns.typ()) {
                // A later container of a pod joins its sandbox's network, IPC and UTS
                // namespaces: in the VM, the first container's (fcvm::bundle's pods).
                (
                    Role::Member { .. },
                    LinuxNamespaceType::Network
                    | LinuxNamespaceType::Ipc
                    | LinuxNamespaceType::Uts,
                ) => {}
                (Role::Member { .. }, LinuxNamespaceType::Pid) => {
                    return Err(refuse(
                        field,
                        "a pod's shared PID namespace is not supported (each container has its own)",
                    ))
                }
                (Role::Sandbox, LinuxNamespaceType::Network) => {
                    return Err(refuse(
                        field,
                        "a pod's network is its VM's; a CNI network namespace is not carried into the VM (use the node network option)",
                    ))
                }
                _ => {
                    return Err(refuse(
                        field,
                        "a VM cannot join another process's namespace",
                    ))
                }
            }
        }
        // A pod without a network namespace of its own (the node's network option) gets
        // its VM's network, the one its containers share; for a lone container, asking for
        // the host's network is refused.
        if *role == Role::Alone
            && !namespaces
                .iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::Network)
        {
            return Err(refuse(
                "host network (no network namespace)",
                "a VM has its own network",
            ));
        }
        if linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(refuse("linux.uidMappings", "not supported in the VM"));
        }
        if linux.sysctl().as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(refuse("linux.sysctl", "not applied in the VM"));
        }
        if linux.seccomp().is_some() {
            return Err(refuse("linux.seccomp", "not applied in the VM"));
        }
        if !privileged {
            if let Some(d) = linux.devices().iter().flatten().next() {
                return Err(refuse(
                    format!("device {}", d.path().display()),
                    "host devices cannot reach the VM",
                ));
            }
        }
        if let Some(r) = linux.resources() {
            if let Some(limit) = r.memory().as_ref().and_then(|m| m.limit()) {
                if limit > 0 && matches!(role, Role::Member { .. }) {
                    return Err(refuse(
                        "linux.resources.memory.limit",
                        "a pod's containers share the VM its sandbox sized; one container's limit cannot be applied in it",
                    ));
                }
                if limit > 0 {
                    let mib = (limit as u64).div_ceil(1 << 20);
                    if mib < MIN_MEM_MIB as u64 {
                        return Err(refuse(
                            "linux.resources.memory.limit",
                            format!("below the {MIN_MEM_MIB} MiB a VM needs"),
                        ));
                    }
                    mem_mib = mib.min(u32::MAX as u64) as u32;
                }
            }
            if let Some(cpu) = r.cpu() {
                if let (Some(quota), Some(period)) = (cpu.quota(), cpu.period()) {
                    if quota > 0 && period > 0 && matches!(role, Role::Member { .. }) {
                        return Err(refuse(
                            "linux.resources.cpu.quota",
                            "a pod's containers share the VM its sandbox sized; one container's limit cannot be applied in it",
                        ));
                    }
                    if quota > 0 && period > 0 {
                        cpus = (quota as u64).div_ceil(period).clamp(1, 64) as u32;
                    }
                }
                if cpu.cpus().is_some() || cpu.mems().is_some() || cpu.realtime_runtime().is_some()
                {
                    return Err(refuse(
                        "linux.resources.cpu",
                        "only quota/period and shares",
                    ));
                }
            }
            let other = [
                ("pids", r.pids().is_some()),
                ("blockIO", r.block_io().is_some()),
                (
                    "hugepageLimits",
                    r.hugepage_limits().as_ref().is_some_and(|h| !h.is_empty()),
                ),
                ("network", r.network().is_some()),
                ("rdma", r.rdma().as_ref().is_some_and(|h| !h.is_empty())),
                (
                    "unified",
                    r.unified().as_ref().is_some_and(|h| !h.is_empty()),
                ),
            ];
            if let Some((name, _)) = other.iter().find(|(_, set)| *set) {
                return Err(refuse(
                    format!("linux.resources.{name}"),
                    "only memory.limit and cpu quota/period size the VM",
                ));
            }
        }
    }
    Ok(Plan {
        process,
        cpus,
        mem_mib,
        hostname: spec.hostname().clone().unwrap_or_default(),
        privileged,
        binds: host_binds,
    })
}

/// An OCI process (the container's, or an exec's) → fcvm's process spec.
pub fn process_spec(p: &Process, stdin: bool) -> Result<ProcessSpec, Refused> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(refuse("process.args", "empty"));
    }
    let (rows, cols) = p
        .console_size()
        .as_ref()
        .filter(|b| b.height() > 0 && b.width() > 0)
        .map(|b| {
            (
                b.height().min(u16::MAX as u64) as u16,
                b.width().min(u16::MAX as u64) as u16,
            )
        })
        .unwrap_or((24, 80));
    let user = p.user();
    Ok(ProcessSpec {
        args,
        env: p.env().clone().unwrap_or_default(),
        cwd: p.cwd().to_string_lossy().into_owned(),
        user: format!("{}:{}", user.uid(), user.gid()),
        tty: p.terminal().unwrap_or(false),
        stdin,
        rows,
        cols,
        privileged: false,
        detach: false,
    })
}

#[cfg(test)]
mod tests;
