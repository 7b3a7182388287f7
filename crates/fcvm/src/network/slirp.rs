//! The VMM's built-in user networking (QEMU's `-netdev user`, libslirp): the default
//! rootless backend, described as a typed [`UserNet`] that the VMM renders.
//!
//! Chosen over passt (why: `network/mod.rs`). Same address plan
//! as [`super::passt`], so the guest cannot tell them apart: 10.0.2.15/24, host loopback at
//! 10.0.2.2, DNS at 10.0.2.3 (libslirp forwards to the host's resolver). No helper process:
//! QEMU itself binds the published ports, so they close when QEMU ends (it dies with fcvm).
//! `restrict=off`: the guest may reach the outside world, as with podman's default network.

use super::passt::{DNS, GATEWAY, GUEST_ADDR, PREFIX};
use super::publish::{Proto, Publish};
use crate::vmm::{HostForward, UserNet};

/// The user-mode network for `ports`: passt's address plan, one forward per port.
pub fn user_net(ports: &[Publish]) -> UserNet {
    let ip = |s: &str| s.parse().expect("fixed address");
    UserNet {
        net: ip("10.0.2.0"),
        prefix: PREFIX,
        host: ip(GATEWAY),
        dns: ip(DNS),
        guest: ip(GUEST_ADDR),
        forwards: ports
            .iter()
            .map(|p| HostForward {
                udp: p.proto == Proto::Udp,
                host_ip: p.host_ip,
                host_port: p.host_port,
                guest_port: p.guest_port,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_forward_per_port() {
        let p = super::super::publish::parse_one("127.0.0.1:8080:80/udp").unwrap();
        let u = super::user_net(&[p]);
        assert_eq!(u.guest.to_string(), "10.0.2.15");
        let f = u.forwards[0];
        assert!(f.udp && f.host_port == 8080 && f.guest_port == 80);
        assert_eq!(f.host_ip, Some("127.0.0.1".parse().unwrap()));
    }
}
