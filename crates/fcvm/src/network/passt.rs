//! Rootless networking through passt (one `passt` process per VM), with
//! `FCVM_ROOTLESS_BACKEND=passt` (not the default: see `network/mod.rs`).
//!
//! QEMU connects its virtio-net device to passt's Unix socket (`-netdev stream`); passt turns
//! the guest's frames into ordinary host sockets, so no privilege is needed.
//!
//! - The guest's address plan is fixed and the same for every VM (the agent sets it, no DHCP):
//!   `10.0.2.15/24`, gateway `10.0.2.2` (passt maps connections to it onto the host's
//!   loopback: a guest reaches a host service on 127.0.0.1:PORT at 10.0.2.2:PORT), DNS
//!   `10.0.2.3` (passt forwards those queries to the host's first resolver).
//! - `--publish` becomes `-t`/`-u` (`IP/HOSTPORT:GUESTPORT`), bound by passt on the host.
//! - Lifetime: passt is spawned with `PR_SET_PDEATHSIG` (SIGKILL), so it dies with fcvm even
//!   on SIGKILL; as root it is told `--runas 0`, because dropping to `nobody` (passt's default)
//!   would clear the death signal. No `--one-off`: a failed snapshot restore falls back to a
//!   cold boot whose QEMU connects to the same passt. passt still
//!   isolates itself (own namespaces, no capabilities, seccomp). [`Passt`]'s drop kills it
//!   and removes its socket.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::publish::{Proto, Publish};
use super::NetworkError;

pub const GUEST_ADDR: &str = "10.0.2.15";
pub const PREFIX: u8 = 24;
pub const GATEWAY: &str = "10.0.2.2";
pub const DNS: &str = "10.0.2.3";
/// 1500: with passt's default 65520, Debian's passt (0.0~git20230309) repeats a reply to the
/// guest forever (measured; see `network/mod.rs`).
pub const MTU: u16 = 1500;

/// A running passt; dropping it stops it and removes its socket.
#[derive(Debug)]
pub struct Passt {
    child: Child,
    pub socket: PathBuf,
}

impl Drop for Passt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// passt's `-t`/`-u` value for one port.
fn port_spec(p: &Publish) -> String {
    let addr = match p.host_ip {
        Some(ip) => format!("{ip}/"),
        None => String::new(),
    };
    format!("{addr}{}:{}", p.host_port, p.guest_port)
}

/// The passt command line (without the binary).
pub fn args(socket: &Path, ports: &[Publish], host_dns: Option<IpAddr>) -> Vec<String> {
    let mut a: Vec<String> = [
        "--foreground",
        "--quiet",
        "--ipv4-only",
        "--no-dhcp",
        "--no-ndp",
        "--no-dhcpv6",
        "--no-ra",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(["--socket".into(), socket.display().to_string()]);
    a.extend(["--address".into(), GUEST_ADDR.into()]);
    a.extend(["--netmask".into(), PREFIX.to_string()]);
    a.extend(["--gateway".into(), GATEWAY.into()]);
    a.extend(["--mtu".into(), MTU.to_string()]);
    a.extend(["--dns-forward".into(), DNS.into()]);
    if let Some(d) = host_dns {
        a.extend(["--dns".into(), d.to_string()]);
    }
    if nix::unistd::geteuid().is_root() {
        a.extend(["--runas".into(), "0".into()]);
    }
    for p in ports {
        let flag = match p.proto {
            Proto::Tcp => "-t",
            Proto::Udp => "-u",
        };
        a.extend([flag.into(), port_spec(p)]);
    }
    a
}

/// Starts passt for the VM in `vm_dir` and waits until its socket is bound.
pub fn start(
    vm_dir: &Path,
    ports: &[Publish],
    host_dns: Option<IpAddr>,
) -> Result<Passt, NetworkError> {
    let bin = crate::util::which("passt").ok_or(NetworkError::Tool("passt", "passt"))?;
    let socket = vm_dir.join("passt.sock");
    let _ = std::fs::remove_file(&socket);
    let log = crate::owner_only::create_file(&vm_dir.join("passt.log"))
        .map_err(|e| NetworkError::Io("creating passt.log".into(), e))?;
    let mut cmd = Command::new(&bin);
    cmd.args(args(&socket, ports, host_dns))
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(|e| NetworkError::Io("creating passt.log".into(), e))?,
        )
        .stderr(log);
    crate::util::owned_by_us(&mut cmd);
    let child = cmd
        .spawn()
        .map_err(|e| NetworkError::Io(format!("starting {}", bin.display()), e))?;
    let mut p = Passt { child, socket };
    let t0 = Instant::now();
    while !p.socket.exists() {
        if let Ok(Some(st)) = p.child.try_wait() {
            let log = std::fs::read_to_string(vm_dir.join("passt.log")).unwrap_or_default();
            return Err(NetworkError::Setup(format!(
                "passt exited ({st}): {}",
                log.lines()
                    .filter(|l| !l.contains("syslog"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )));
        }
        if t0.elapsed() > Duration::from_secs(10) {
            return Err(NetworkError::Setup(
                "passt did not bind its socket in 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    tracing::debug!(
        pid = p.child.id(),
        "passt listening on {}",
        p.socket.display()
    );
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_becomes_passt_ports() {
        let ports =
            super::super::publish::parse_all(&["127.0.0.1:8080:80,53:53/udp".into()]).unwrap();
        let a = args(Path::new("/x/passt.sock"), &ports, None).join(" ");
        assert!(a.contains("-t 127.0.0.1/8080:80"), "{a}");
        assert!(a.contains("-u 53:53"), "{a}");
        assert!(a.contains("--dns-forward 10.0.2.3"), "{a}");
    }
}
