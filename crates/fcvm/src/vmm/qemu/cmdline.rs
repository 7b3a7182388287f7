//! The QEMU command line for one fcvm VM (`-M microvm`, PVH boot of an ELF vmlinux).
//!
//! Kept a pure function of the [`VmSpec`] so it can be unit-tested and, later, reproduced
//! exactly when a snapshot is restored (the restoring QEMU must have the same devices).

use std::path::Path;

use crate::vmm::{Accel, Memory, VmSpec};

/// Files inside the VM directory that QEMU creates or uses.
pub const AGENT_SOCK: &str = "agent.sock";
pub const QMP_SOCK: &str = "qmp.sock";
/// The fd QEMU finds QMP's listening socket ([`QMP_SOCK`]) on.
pub const QMP_FD: i32 = 3;
pub const CONSOLE_LOG: &str = "console.log";

/// Host TSC frequency in kHz. Debian's kernel hangs on microvm under TCG without
/// `tsc_early_khz` (DESIGN §2); /proc/cpuinfo's "cpu MHz" is what the probe used.
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    Some((mhz * 1000.0) as u64)
}

/// The fixed kernel arguments. Part of the image-cache key: a restored snapshot runs a kernel
/// that booted with them.
///
/// `lsm=`: Debian's kernel also enables AppArmor and TOMOYO, whose hooks run on every exec
/// and open (TOMOYO computes the path of each executable). No policy is ever loaded in an
/// fcvm guest — the VM is the isolation boundary; crun applies namespaces, capabilities and
/// seccomp — so they only cost: ~380 of the ~18,400 translation blocks of a cached start
/// under TCG. Landlock (unprivileged sandboxing), Yama, lockdown and BPF stay.
///
/// The rest quiets background work that a restore inherits (timers that fire in its first
/// few hundred ms: ~3 % of a cached start's blocks, measured over several snapshots):
/// `tsc=reliable` (QEMU's TSC is the guest's only good clock: the clocksource watchdog, on a
/// slow host, marks it unstable and falls back to jiffies — seen right after restores under
/// load), `nowatchdog` (no soft-lockup reports when the host, not the guest, stalls),
/// `psi=0` (pressure accounting on every context switch; nothing in a guest reads it),
/// `cgroup.memory=nokmem` (kernel memory charged to cgroups on every allocation; fcvm sets no
/// container memory limit — the VM's memory is the limit) and no proactive compaction.
pub const KERNEL_ARGS: &str = "console=ttyS0 quiet panic=-1 reboot=t \
     lsm=landlock,lockdown,yama,bpf tsc=reliable nowatchdog psi=0 cgroup.memory=nokmem \
     sysctl.vm.compaction_proactiveness=0";

/// [`KERNEL_ARGS`] and the TSC frequency. The frequency is not part of the key: it is read
/// from /proc/cpuinfo, which varies with frequency scaling, and would defeat the cache.
pub fn kernel_cmdline(tsc_khz: Option<u64>) -> String {
    let mut s = String::from(KERNEL_ARGS);
    if let Some(k) = tsc_khz {
        s.push_str(&format!(" tsc_early_khz={k}"));
    }
    s
}

/// Arguments (without the program name).
pub fn args(spec: &VmSpec, tsc_khz: Option<u64>) -> Vec<String> {
    let dir = &spec.dir;
    let p = |name: &str| dir.join(name).display().to_string();
    let mut a: Vec<String> = vec![];
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg"]),
    }
    match &spec.memory {
        Memory::Anonymous => push(&["-M", "microvm"]),
        Memory::File { path, shared } => {
            push(&["-M", "microvm,memory-backend=mem", "-object"]);
            a.push(format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
                spec.mem_mib,
                path_str(path),
                if *shared { "on" } else { "off" }
            ));
        }
    }
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    a.extend([
        "-smp".into(),
        spec.cpus.to_string(),
        "-m".into(),
        format!("{}M", spec.mem_mib),
        "-chardev".into(),
        format!("file,id=con,path={}", p(CONSOLE_LOG)),
        "-serial".into(),
        "chardev:con".into(),
        "-kernel".into(),
        path_str(&spec.kernel),
        "-initrd".into(),
        path_str(&spec.initramfs),
        "-append".into(),
        kernel_cmdline(tsc_khz),
        // QMP listens on a socket fcvm bound before starting QEMU (see `Qemu::start`).
        "-chardev".into(),
        format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-chardev".into(),
        format!("socket,id=agent,path={},server=on,wait=off", p(AGENT_SOCK)),
        "-device".into(),
        "virtio-serial-device".into(),
        "-device".into(),
        format!(
            "virtserialport,chardev=agent,name={}",
            fcvm_proto::PORT_NAME
        ),
    ]);
    for (i, d) in spec.disks.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        a.push("-drive".into());
        a.push(format!(
            "file={},format=raw,if=none,id=disk{i},cache=unsafe{ro}",
            path_str(&d.path)
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-device,drive=disk{i}"));
    }
    a.extend(spec.extra_args.iter().cloned());
    if spec.incoming {
        a.extend(["-incoming".into(), "defer".into()]);
    }
    a
}

fn path_str(p: &Path) -> String {
    // QEMU's option parser treats ',' as a separator; paths we create never contain one.
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::Disk;

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            dir: "/d/vm1".into(),
            kernel: "/a/vmlinux".into(),
            initramfs: "/a/initrd.cpio".into(),
            cpus: 2,
            mem_mib: 512,
            disks: vec![
                Disk {
                    path: "/i/rootfs.erofs".into(),
                    read_only: true,
                },
                Disk {
                    path: "/d/vm1/rw.ext4".into(),
                    read_only: false,
                },
            ],
            accel,
            extra_args: vec![],
            memory: Memory::Anonymous,
            incoming: false,
        }
    }

    #[test]
    fn tcg_microvm_with_agent_port_and_disks() {
        let a = args(&spec(Accel::Tcg), Some(2_500_000)).join(" ");
        assert!(a.starts_with("-accel tcg -M microvm"), "{a}");
        assert!(a.contains("-smp 2 -m 512M"));
        assert!(a.contains("tsc_early_khz=2500000"));
        assert!(a.contains("virtserialport,chardev=agent,name=fcvm.agent"));
        assert!(
            a.contains("file=/i/rootfs.erofs,format=raw,if=none,id=disk0,cache=unsafe,readonly=on")
        );
        assert!(a.contains("id=disk1,cache=unsafe -device"));
        assert!(a.contains("socket,id=agent,path=/d/vm1/agent.sock,server=on,wait=off"));
    }

    #[test]
    fn restore_maps_snapshot_ram_private_and_waits_for_state() {
        let mut s = spec(Accel::Tcg);
        s.memory = Memory::File {
            path: "/s/ram".into(),
            shared: false,
        };
        s.incoming = true;
        let a = args(&s, None).join(" ");
        assert!(a.contains("-M microvm,memory-backend=mem -object memory-backend-file,id=mem,size=512M,mem-path=/s/ram,share=off"), "{a}");
        assert!(a.ends_with("-incoming defer"));
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let a = args(&spec(Accel::Kvm), None).join(" ");
        assert!(a.starts_with("-accel kvm -cpu host"));
        assert!(!a.contains("tsc_early_khz"));
    }
}
