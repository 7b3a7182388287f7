//! The QEMU command line for one fcvm VM (`-M microvm`, PVH boot of an ELF vmlinux).
//!
//! Kept a pure function of the [`VmSpec`] so it can be unit-tested and reproduced exactly
//! when a snapshot is restored (the restoring QEMU must have the same devices). This is the
//! only place fcvm writes QEMU option strings: every value that comes from elsewhere (paths,
//! interface names) goes through [`opt`], which doubles its commas — QEMU's option parser
//! splits on `,`, so a data directory named `a,b` would otherwise inject options.

use std::path::Path;

use crate::vmm::{kernel_args, Accel, Memory, NetDev, Nic, UserNet, VmSpec, CONSOLE_LOG, TCG_CPU};

/// Files inside the VM directory that QEMU creates or uses.
pub const AGENT_SOCK: &str = "agent.sock";
pub const QMP_SOCK: &str = "qmp.sock";
/// The fds QEMU finds the listening sockets fcvm bound for it on: QMP's ([`QMP_SOCK`]) and
/// the agent channel's ([`AGENT_SOCK`]). fcvm binds them so it sets their mode itself.
pub const QMP_FD: i32 = 3;
pub const AGENT_FD: i32 = 4;

/// Host TSC frequency in kHz. Debian's kernel hangs on microvm under TCG without
/// `tsc_early_khz` (docs/design.md §2); /proc/cpuinfo's "cpu MHz" is what the probe used.
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

/// [`kernel_args`] and the TSC frequency. The frequency is not part of the key: it is read
/// from /proc/cpuinfo, which varies with frequency scaling, and would defeat the cache.
fn kernel_cmdline(accel: Accel, tsc_khz: Option<u64>) -> String {
    let mut s = kernel_args(accel);
    if let Some(k) = tsc_khz {
        s.push_str(&format!(" tsc_early_khz={k}"));
    }
    s
}

/// Arguments (without the program name).
pub fn args(spec: &VmSpec, tsc_khz: Option<u64>) -> Vec<String> {
    let dir = &spec.dir;
    let p = |name: &str| opt(&dir.join(name).display().to_string());
    let mut a: Vec<String> = vec![];
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    match spec.accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => push(&["-accel", "tcg", "-cpu", TCG_CPU]),
    }
    match &spec.memory {
        Memory::Anonymous => push(&["-M", "microvm"]),
        Memory::File { path, shared } => {
            push(&["-M", "microvm,memory-backend=mem", "-object"]);
            a.push(format!(
                "memory-backend-file,id=mem,size={}M,mem-path={},share={}",
                spec.mem_mib,
                opt_path(path),
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
        kernel_cmdline(spec.accel, tsc_khz),
        // QMP listens on a socket fcvm bound before starting QEMU (see `Qemu::start`).
        "-chardev".into(),
        format!("socket,id=qmp,fd={QMP_FD},server=on,wait=off"),
        "-mon".into(),
        "chardev=qmp,mode=control".into(),
        "-chardev".into(),
        format!("socket,id=agent,fd={AGENT_FD},server=on,wait=off"),
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
            opt_path(&d.path)
        ));
        let serial = d.serial.as_deref().map(|s| format!(",serial={}", opt(s)));
        a.push("-device".into());
        a.push(format!(
            "virtio-blk-device,drive=disk{i}{}",
            serial.unwrap_or_default()
        ));
    }
    if let Some(nic) = &spec.nic {
        a.extend(nic_args(nic));
    }
    if spec.incoming {
        a.extend(["-incoming".into(), "defer".into()]);
    }
    a
}

/// The `-netdev` and `-device` arguments of the guest's network card.
fn nic_args(nic: &Nic) -> Vec<String> {
    let netdev = match &nic.netdev {
        NetDev::User(u) => user_netdev(u),
        NetDev::Stream { socket } => format!(
            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
            opt_path(socket)
        ),
        NetDev::Tap { ifname } => {
            format!("tap,id=n0,ifname={},script=no,downscript=no", opt(ifname))
        }
        NetDev::Inert => "user,id=n0,restrict=on".into(),
    };
    vec![
        "-netdev".into(),
        netdev,
        "-device".into(),
        format!("virtio-net-device,netdev=n0,mac={}", opt(&nic.mac)),
    ]
}

/// `-netdev user,...` (libslirp): the guest's address plan and one `hostfwd` per port.
/// `restrict=off` (the default): the guest may reach the outside world, as with podman's
/// default network.
fn user_netdev(u: &UserNet) -> String {
    let mut s = format!(
        "user,id=n0,net={}/{},host={},dns={},dhcpstart={}",
        u.net, u.prefix, u.host, u.dns, u.guest
    );
    for f in &u.forwards {
        let proto = if f.udp { "udp" } else { "tcp" };
        let ip = match f.host_ip {
            Some(std::net::IpAddr::V6(a)) => format!("[{a}]"),
            Some(a) => a.to_string(),
            None => String::new(),
        };
        s.push_str(&format!(
            ",hostfwd={proto}:{ip}:{}-{}:{}",
            f.host_port, u.guest, f.guest_port
        ));
    }
    s
}

/// A value inside a QEMU option list: `,` doubled (QEMU's escape), so it stays one value.
fn opt(v: &str) -> String {
    v.replace(',', ",,")
}

fn opt_path(p: &Path) -> String {
    opt(&p.display().to_string())
}

/// A whole argument that is not an option list (`-kernel PATH`, `-initrd PATH`).
fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::{Disk, HostForward, VmmKind};

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            kind: VmmKind::Qemu,
            dir: "/d/vm1".into(),
            kernel: "/a/vmlinux".into(),
            initramfs: "/a/initrd.cpio".into(),
            cpus: 2,
            mem_mib: 512,
            disks: vec![
                Disk {
                    path: "/i/rootfs.erofs".into(),
                    read_only: true,
                    serial: None,
                },
                Disk {
                    path: "/d/vm1/rw.ext4".into(),
                    read_only: false,
                    serial: None,
                },
            ],
            accel,
            nic: None,
            memory: Memory::Anonymous,
            incoming: false,
        }
    }

    #[test]
    fn tcg_microvm_with_agent_port_and_disks() {
        let a = args(&spec(Accel::Tcg), Some(2_500_000)).join(" ");
        assert!(
            a.starts_with("-accel tcg -cpu qemu64,+arat -M microvm"),
            "{a}"
        );
        assert!(a.contains("-smp 2 -m 512M"));
        assert!(a.contains("mitigations=off tsc_early_khz=2500000"), "{a}");
        assert!(a.contains("virtserialport,chardev=agent,name=fcvm.agent"));
        assert!(
            a.contains("file=/i/rootfs.erofs,format=raw,if=none,id=disk0,cache=unsafe,readonly=on")
        );
        assert!(a.contains("id=disk1,cache=unsafe -device"));
        assert!(a.contains("socket,id=agent,fd=4,server=on,wait=off"));
    }

    #[test]
    fn extra_disks_carry_their_serial_and_others_none() {
        let mut s = spec(Accel::Tcg);
        s.disks.push(Disk {
            path: "/d/vm1/disk0.img".into(),
            read_only: false,
            serial: Some("fcvm-disk0".into()),
        });
        let a = args(&s, None).join(" ");
        assert!(a.contains("-device virtio-blk-device,drive=disk1 "), "{a}");
        assert!(
            a.contains(
                "id=disk2,cache=unsafe -device virtio-blk-device,drive=disk2,serial=fcvm-disk0"
            ),
            "{a}"
        );
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
        assert!(
            !a.contains("mitigations=off"),
            "a real CPU keeps its mitigations"
        );
    }

    #[test]
    fn nics_render_from_typed_values() {
        let mut s = spec(Accel::Tcg);
        let user = UserNet {
            net: "10.0.2.0".parse().unwrap(),
            prefix: 24,
            host: "10.0.2.2".parse().unwrap(),
            dns: "10.0.2.3".parse().unwrap(),
            guest: "10.0.2.15".parse().unwrap(),
            forwards: vec![HostForward {
                udp: true,
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 8080,
                guest_port: 80,
            }],
        };
        let mac = "02:fc:00:00:00:01".to_string();
        let cases = [
            (
                NetDev::User(user),
                "-netdev user,id=n0,net=10.0.2.0/24,host=10.0.2.2,dns=10.0.2.3,dhcpstart=10.0.2.15,hostfwd=udp:127.0.0.1:8080-10.0.2.15:80 ",
            ),
            (
                NetDev::Tap { ifname: "fc0".into() },
                "-netdev tap,id=n0,ifname=fc0,script=no,downscript=no ",
            ),
            (
                NetDev::Stream { socket: "/d/p.sock".into() },
                "-netdev stream,id=n0,server=off,addr.type=unix,addr.path=/d/p.sock ",
            ),
            (NetDev::Inert, "-netdev user,id=n0,restrict=on "),
        ];
        for (netdev, want) in cases {
            s.nic = Some(Nic {
                netdev,
                mac: mac.clone(),
            });
            let a = args(&s, None).join(" ");
            assert!(a.contains(want), "{a}");
            assert!(a.contains("-device virtio-net-device,netdev=n0,mac=02:fc:00:00:00:01"));
        }
    }

    #[test]
    fn commas_in_paths_stay_inside_their_value() {
        let mut s = spec(Accel::Tcg);
        s.dir = "/data,x=1/vm".into();
        s.disks[0].path = "/i,readonly=off/rootfs".into();
        s.memory = Memory::File {
            path: "/s,share=on/ram".into(),
            shared: false,
        };
        s.nic = Some(Nic {
            netdev: NetDev::Stream {
                socket: "/p,addr.path=/x/passt.sock".into(),
            },
            mac: "02:fc:00:00:00:01".into(),
        });
        let a = args(&s, None);
        let joined = a.join(" ");
        assert!(
            joined.contains("path=/data,,x=1/vm/console.log"),
            "{joined}"
        );
        assert!(joined.contains("file=/i,,readonly=off/rootfs,format=raw"));
        assert!(joined.contains("mem-path=/s,,share=on/ram,share=off"));
        assert!(joined.contains("addr.path=/p,,addr.path=/x/passt.sock"));
    }
}
