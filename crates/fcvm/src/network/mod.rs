//! VM networking: `--network rootless|bridged|none` and `--publish`.
//!
//! - **rootless** (default): QEMU's own user networking ([`slirp`]), or passt ([`passt`]) behind
//!   QEMU's `-netdev stream` with `FCVM_ROOTLESS_BACKEND=passt`. The guest always sees
//!   10.0.2.15/24, gateway 10.0.2.2 (= the host's loopback: a host service on 127.0.0.1:PORT
//!   is 10.0.2.2:PORT from the guest), DNS 10.0.2.3 (forwarded to the host's resolver from
//!   /etc/resolv.conf). `FCVM_DNS=IP[,IP]` replaces the guest's nameservers (podman's `--dns`).
//! - **bridged** (root): a network namespace per VM behind a tap, NAT, `--publish` by DNAT
//!   ([`bridged`]); same guest addresses; the guest's DNS is the host's (non-loopback)
//!   resolvers. Networks of VMs whose fcvm died are reaped by the next `setup`.
//! - **none**: no NIC; the guest has only `lo`.
//!
//! Why slirp and not passt (measured here, TCG, 2 cores, bench/network.py and
//! tests/network.rs with either backend): Debian's passt 0.0~git20230309 never delivers
//! guest→host bulk data on a published port (0 bytes, the reader times out), never ends a
//! guest-initiated connection the host side closes (busybox nc hangs), and at its default MTU
//! 65520 repeats a reply to the guest forever. slirp passes every test; it is slower per
//! request (≈59 vs 78 req/s, 16 vs 6 ms) — correctness first. passt stays selectable, at MTU
//! 1500, for a newer passt.
//!
//! API: [`NetworkOptions`] from the flags (ports parsed once, by clap, with
//! [`publish::parse_one`]); [`check`] before anything is created (duplicates, free ports,
//! tools, privileges) → a [`NetworkPlan`]; [`setup`] per VM → [`Network`] (the VM's typed
//! [`Nic`], the guest's `NetConfig` that the agent applies, what `ls --json` shows). Dropping
//! the `Network` tears everything down (the passt process; slirp's ports close with QEMU,
//! which dies with fcvm). Nothing here knows a VMM's argument syntax.

pub mod bridged;
pub mod netns;
pub mod passt;
pub mod publish;
pub mod slirp;

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vmm::{NetDev, Nic};

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("Invalid --network {0:?}: expected rootless, bridged or none")]
    Mode(String),
    #[error("Invalid --publish {0:?}: {1}")]
    Publish(String, String),
    #[error("--publish {0}: the host port is not available")]
    PortBusy(String, #[source] std::io::Error),
    #[error("--publish needs a network: --network none has none")]
    PublishWithoutNetwork,
    #[error("--network bridged needs root (use --network rootless)")]
    BridgedNeedsRoot,
    #[error("{0} not found: install the {1} package")]
    Tool(&'static str, &'static str),
    #[error("Network setup failed: {0}")]
    Setup(String),
    #[error("Network setup: {0}")]
    Io(String, #[source] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Rootless,
    Bridged,
    None,
}

impl std::str::FromStr for NetworkMode {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        match s {
            "rootless" | "passt" | "slirp4netns" | "pasta" => Ok(NetworkMode::Rootless),
            "bridged" | "bridge" => Ok(NetworkMode::Bridged),
            "none" => Ok(NetworkMode::None),
            _ => Err(NetworkError::Mode(s.into())),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NetworkOptions {
    pub mode: NetworkMode,
    /// `--publish` values, parsed (a host port of 0 is picked by [`check`]).
    pub publish: Vec<publish::Publish>,
}

/// Network options that passed [`check`]: every host port is free (and chosen, where the
/// user left it to fcvm).
#[derive(Debug, Clone)]
pub struct NetworkPlan {
    mode: NetworkMode,
    ports: Vec<publish::Publish>,
}

/// What `fcvm ls --json` shows about a VM's network.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub mode: NetworkMode,
    pub address: Option<String>,
    pub gateway: Option<String>,
    pub ports: Vec<String>,
}

/// A VM's network while it runs; dropping it tears everything down.
#[derive(Debug, Default)]
pub struct Network {
    /// The VM's network card (None: no network).
    pub nic: Option<Nic>,
    pub guest: Option<fcvm_proto::NetConfig>,
    pub info: NetworkInfo,
    /// The helper process (passt), stopped on drop.
    _helper: Option<passt::Passt>,
    /// The bridged network's netns, links and rules, removed on drop.
    _bridged: Option<bridged::Bridged>,
}

/// Which rootless backend: QEMU's slirp (default) or passt.
fn use_slirp() -> bool {
    std::env::var("FCVM_ROOTLESS_BACKEND").as_deref() != Ok("passt")
}

/// The guest's nameservers: `FCVM_DNS` (comma list) or the backend's DNS forwarder.
fn guest_dns() -> Result<Vec<String>, NetworkError> {
    match std::env::var("FCVM_DNS") {
        Ok(v) if !v.is_empty() => v
            .split(',')
            .map(|d| {
                d.trim()
                    .parse::<std::net::Ipv4Addr>()
                    .map(|ip| ip.to_string())
                    .map_err(|_| NetworkError::Setup(format!("FCVM_DNS: bad address {d:?}")))
            })
            .collect(),
        _ => Ok(vec![passt::DNS.into()]),
    }
}

/// Validates the options up front (duplicate ports, ports free, tools present, privileges).
pub fn check(opts: &NetworkOptions) -> Result<NetworkPlan, NetworkError> {
    let plan = |ports| NetworkPlan {
        mode: opts.mode,
        ports,
    };
    publish::check_unique(&opts.publish)?;
    match opts.mode {
        NetworkMode::None if !opts.publish.is_empty() => {
            return Err(NetworkError::PublishWithoutNetwork)
        }
        NetworkMode::None => return Ok(plan(vec![])),
        NetworkMode::Bridged => {
            if !nix::unistd::geteuid().is_root() {
                return Err(NetworkError::BridgedNeedsRoot);
            }
            for (tool, pkg) in [("ip", "iproute2"), ("iptables", "iptables")] {
                if crate::util::which(tool).is_none() {
                    return Err(NetworkError::Tool(tool, pkg));
                }
            }
        }
        NetworkMode::Rootless => {}
    }
    if opts.mode == NetworkMode::Rootless && !use_slirp() && crate::util::which("passt").is_none() {
        return Err(NetworkError::Tool("passt", "passt"));
    }
    guest_dns()?;
    Ok(plan(publish::resolve(opts.publish.clone())?))
}

/// Sets up the network of one VM whose directory is `vm_dir`.
pub fn setup(plan: &NetworkPlan, vm_dir: &Path, vm_id: &str) -> Result<Network, NetworkError> {
    // Bridged networks of VMs whose fcvm died (SIGKILL) go first, whatever this VM's mode.
    if nix::unistd::geteuid().is_root() {
        netns::reap_orphans();
    }
    if plan.mode == NetworkMode::None {
        return Ok(Network {
            info: NetworkInfo {
                mode: NetworkMode::None,
                ..Default::default()
            },
            ..Default::default()
        });
    }
    let ports = &plan.ports;
    let resolv = std::env::var_os("FCVM_HOST_RESOLV_CONF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/etc/resolv.conf".into());
    let (servers, search) = read_resolv_conf(&std::fs::read_to_string(resolv).unwrap_or_default());
    let nic = |netdev| {
        Some(Nic {
            netdev,
            mac: mac(vm_id),
        })
    };
    let address = format!("{}/{}", passt::GUEST_ADDR, passt::PREFIX);
    let ports_info = ports.iter().map(|p| p.display()).collect();
    if plan.mode == NetworkMode::Bridged {
        let (b, tap) = bridged::setup(vm_id, ports)?;
        let dns = match std::env::var("FCVM_DNS") {
            Ok(v) if !v.is_empty() => guest_dns()?,
            _ => servers
                .iter()
                .filter(|s| !s.is_loopback())
                .map(|s| s.to_string())
                .collect(),
        };
        return Ok(Network {
            nic: nic(NetDev::Tap { ifname: tap }),
            guest: Some(fcvm_proto::NetConfig {
                address: address.clone(),
                gateway: passt::GATEWAY.into(),
                dns,
                search,
                mtu: 1500,
            }),
            info: NetworkInfo {
                mode: NetworkMode::Bridged,
                address: Some(address),
                gateway: Some(passt::GATEWAY.into()),
                ports: ports_info,
            },
            _helper: None,
            _bridged: Some(b),
        });
    }
    let (netdev, helper, mtu) = if use_slirp() {
        (NetDev::User(slirp::user_net(ports)), None, 1500)
    } else {
        let p = passt::start(vm_dir, ports, servers.first().copied())?;
        let nd = NetDev::Stream {
            socket: p.socket.clone(),
        };
        (nd, Some(p), passt::MTU)
    };
    Ok(Network {
        nic: nic(netdev),
        guest: Some(fcvm_proto::NetConfig {
            address: address.clone(),
            gateway: passt::GATEWAY.into(),
            dns: guest_dns()?,
            search,
            mtu,
        }),
        info: NetworkInfo {
            mode: NetworkMode::Rootless,
            address: Some(address),
            gateway: Some(passt::GATEWAY.into()),
            ports: ports_info,
        },
        _helper: helper,
        _bridged: None,
    })
}

/// A locally administered unicast MAC derived from the VM id (stable for the VM).
pub fn mac(vm_id: &str) -> String {
    let h = crate::util::sha256_hex(vm_id.as_bytes());
    let b = |i: usize| &h[2 * i..2 * i + 2];
    format!("02:fc:{}:{}:{}:{}", b(0), b(1), b(2), b(3))
}

/// IPv4 nameservers and search domains of a resolv.conf.
pub fn read_resolv_conf(text: &str) -> (Vec<IpAddr>, Vec<String>) {
    let (mut servers, mut search) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let mut w = line.split_whitespace();
        match w.next() {
            Some("nameserver") => {
                if let Some(ip) = w.next().and_then(|s| s.parse::<IpAddr>().ok()) {
                    if ip.is_ipv4() {
                        servers.push(ip);
                    }
                }
            }
            Some("search") | Some("domain") => search = w.map(String::from).collect(),
            _ => {}
        }
    }
    (servers, search)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_and_mac() {
        let (s, d) = read_resolv_conf("# x\nnameserver 127.0.0.53\nnameserver ::1\nsearch a.b c\n");
        assert_eq!(s, vec!["127.0.0.53".parse::<IpAddr>().unwrap()]);
        assert_eq!(d, vec!["a.b", "c"]);
        let m = mac("abc");
        assert!(m.starts_with("02:fc:") && m.len() == 17, "{m}");
    }

    #[test]
    fn mode_and_checks() {
        assert_eq!("none".parse::<NetworkMode>().unwrap(), NetworkMode::None);
        assert!("bogus".parse::<NetworkMode>().is_err());
        let none = NetworkOptions {
            mode: NetworkMode::None,
            publish: vec![publish::parse_one("8080:80").unwrap()],
        };
        assert!(matches!(
            check(&none),
            Err(NetworkError::PublishWithoutNetwork)
        ));
        let bridged = NetworkOptions {
            mode: NetworkMode::Bridged,
            publish: vec![],
        };
        assert_eq!(check(&bridged).is_ok(), nix::unistd::geteuid().is_root());
    }
}
