//! Bridged networking (root): a network namespace per VM, NAT, `--publish` by DNAT.
//!
//! Names come from the VM id's first 8 hex digits (`ID8`):
//! - netns `fcvm-ID8`; tap `fcvmID8t` (QEMU's `-netdev tap`); veth pair `fcvmID8h` (host) ↔
//!   `fcvmID8n` (in the netns) on a private /30 from 10.202.0.0/16 (host .1, netns .2);
//! - in the netns: the tap holds the guest's gateway 10.0.2.2/24 (the guest is 10.0.2.15, the
//!   same in every VM: clones keep their address), forwarding on, MASQUERADE out of the veth,
//!   and DNAT of each published port to 10.0.2.15;
//! - on the host: DNAT (nat PREROUTING and OUTPUT) of each published port to the netns's veth
//!   address, MASQUERADE of the /30 and of loopback-sourced traffic into the veth
//!   (`route_localnet` on that veth only, so 127.0.0.1 ports work), every rule tagged with the
//!   comment `fcvm-ID8`.
//!
//! QEMU runs in the host namespace, so the tap is created there; a watcher thread moves it into
//! the netns as soon as a QEMU has attached it (its carrier comes up) — a tap keeps working
//! across the move. The guest's outbound traffic leaves the host only where the host forwards
//! (`net.ipv4.ip_forward`; fcvm does not change it).
//!
//! Teardown: [`Bridged`]'s drop deletes the netns (veth, tap and the netns's rules with it), the
//! tap if still on the host, and the tagged host rules. A record in /run/fcvm-net/ID8.json names
//! the owning fcvm process; [`reap_orphans`](super::netns::reap_orphans) (run by every `network::setup`) tears down the networks of
//! owners that died (SIGKILL).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::netns::{claim, run, slot_addrs, teardown, Names, RUN_DIR};
use super::publish::Publish;
use super::NetworkError;

const GUEST: &str = "10.0.2.15";

/// A VM's bridged network; dropping it removes everything named after the VM.
#[derive(Debug)]
pub struct Bridged {
    names: Names,
    stop: Arc<AtomicBool>,
}

impl Drop for Bridged {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        teardown(&self.names);
    }
}

/// Creates the VM's network (`network::setup` has reaped orphans first); returns it and the
/// tap's name for QEMU's `-netdev tap`.
pub fn setup(vm_id: &str, ports: &[Publish]) -> Result<(Bridged, String), NetworkError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(NetworkError::Setup(
            "--network bridged needs root (use rootless)".into(),
        ));
    }
    for tool in [("ip", "iproute2"), ("iptables", "iptables")] {
        if crate::util::which(tool.0).is_none() {
            return Err(NetworkError::Tool(tool.0, tool.1));
        }
    }
    crate::owner_only::create_dir(Path::new(RUN_DIR))
        .map_err(|e| NetworkError::Io(format!("creating {RUN_DIR}"), e))?;
    let n = Names::new(vm_id);
    let lock_err = |e| NetworkError::Io(format!("locking {RUN_DIR}/.lock"), e);
    let lock = crate::owner_only::open_lock(&Path::new(RUN_DIR).join(".lock")).map_err(lock_err)?;
    lock.lock().map_err(lock_err)?;
    let slot = claim(&n)?;
    drop(lock);
    let b = Bridged {
        names: n.clone(),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let (h, p) = slot_addrs(slot);
    let (hc, pc) = (format!("{h}/30"), format!("{p}/30"));
    let ns = |args: &[&str]| {
        let mut a = vec!["ip", "netns", "exec", &n.netns];
        a.extend_from_slice(args);
        run(&a)
    };
    run(&["ip", "netns", "add", &n.netns])?;
    run(&["ip", "tuntap", "add", &n.tap, "mode", "tap"])?;
    run(&["ip", "link", "set", &n.tap, "up"])?;
    run(&[
        "ip", "link", "add", &n.host, "type", "veth", "peer", "name", &n.peer, "netns", &n.netns,
    ])?;
    run(&["ip", "addr", "add", &hc, "dev", &n.host])?;
    run(&["ip", "link", "set", &n.host, "up"])?;
    std::fs::write(
        format!("/proc/sys/net/ipv4/conf/{}/route_localnet", n.host),
        "1",
    )
    .map_err(|e| NetworkError::Io("setting route_localnet".into(), e))?;
    ns(&["ip", "link", "set", "lo", "up"])?;
    ns(&["ip", "addr", "add", &pc, "dev", &n.peer])?;
    ns(&["ip", "link", "set", &n.peer, "up"])?;
    ns(&["ip", "route", "add", "default", "via", &h.to_string()])?;
    ns(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    ns(&[
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-o",
        &n.peer,
        "-j",
        "MASQUERADE",
    ])?;
    let tag = ["-m", "comment", "--comment", n.tag.as_str()];
    let sub = format!("{h}/30");
    let host_rule = |chain: &str, rest: &[&str]| {
        let mut a = vec!["iptables", "-t", "nat", "-A", chain];
        a.extend_from_slice(rest);
        a.extend_from_slice(&tag);
        run(&a)
    };
    host_rule(
        "POSTROUTING",
        &["-s", &sub, "!", "-o", &n.host, "-j", "MASQUERADE"],
    )?;
    host_rule(
        "POSTROUTING",
        &["-s", "127.0.0.0/8", "-o", &n.host, "-j", "MASQUERADE"],
    )?;
    for pt in ports {
        let proto = pt.proto.as_str();
        let hp = pt.host_port.to_string();
        let to_ns = format!("{p}:{hp}");
        let dst: Vec<String> = match pt.host_ip {
            Some(ip) => vec!["-d".into(), ip.to_string()],
            None => vec![
                "-m".into(),
                "addrtype".into(),
                "--dst-type".into(),
                "LOCAL".into(),
            ],
        };
        let mut r: Vec<&str> = dst.iter().map(String::as_str).collect();
        r.extend([
            "-p",
            proto,
            "--dport",
            &hp,
            "-j",
            "DNAT",
            "--to-destination",
            &to_ns,
        ]);
        host_rule("PREROUTING", &r)?;
        host_rule("OUTPUT", &r)?;
        let to_guest = format!("{GUEST}:{}", pt.guest_port);
        ns(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-i",
            &n.peer,
            "-p",
            proto,
            "--dport",
            &hp,
            "-j",
            "DNAT",
            "--to-destination",
            &to_guest,
        ])?;
    }
    if std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "0") {
        tracing::warn!(
            "net.ipv4.ip_forward is 0: the bridged VM reaches this host ({h}) but nothing beyond"
        );
    }
    spawn_tap_mover(n.clone(), b.stop.clone());
    Ok((b, n.tap))
}

/// Moves the tap into the netns whenever a QEMU has attached it in the host namespace, and
/// gives it the gateway address. It keeps watching while the network lives: a second QEMU for
/// the same VM (a failed snapshot restore falls back to a cold boot) creates a new tap of the
/// same name on the host, which replaces the old one in the netns.
fn spawn_tap_mover(n: Names, stop: Arc<AtomicBool>) {
    let carrier = PathBuf::from(format!("/sys/class/net/{}/carrier", n.tap));
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if std::fs::read_to_string(&carrier).is_ok_and(|c| c.trim() == "1") {
                let ns = ["ip", "netns", "exec", n.netns.as_str()];
                let _ = run(&[&ns[..], &["ip", "link", "del", &n.tap]].concat());
                let r = run(&["ip", "link", "set", &n.tap, "netns", &n.netns]).and_then(|_| {
                    run(&[
                        &ns[..],
                        &["ip", "addr", "add", "10.0.2.2/24", "dev", &n.tap],
                    ]
                    .concat())?;
                    run(&[&ns[..], &["ip", "link", "set", &n.tap, "up"]].concat())
                });
                if let Err(e) = r {
                    tracing::warn!("bridged: moving {} into {}: {e}", n.tap, n.netns);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
}
