//! QEMU's built-in user networking (`-netdev user`, libslirp): the default rootless backend.
//!
//! Chosen over passt (why: `network/mod.rs`). Same address plan
//! as [`super::passt`], so the guest cannot tell them apart: 10.0.2.15/24, host loopback at
//! 10.0.2.2, DNS at 10.0.2.3 (libslirp forwards to the host's resolver). No helper process:
//! QEMU itself binds the published ports, so they close when QEMU ends (it dies with fcvm).
//! `restrict=off`: the guest may reach the outside world, as with podman's default network.

use super::publish::{Proto, Publish};

/// The `-netdev user,...` value for `ports`.
pub fn netdev(ports: &[Publish]) -> String {
    let mut s = format!(
        "user,id=n0,net=10.0.2.0/{},host={},dns={},dhcpstart={}",
        super::passt::PREFIX,
        super::passt::GATEWAY,
        super::passt::DNS,
        super::passt::GUEST_ADDR
    );
    for p in ports {
        let proto = match p.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        let ip = match p.host_ip {
            Some(std::net::IpAddr::V6(a)) => format!("[{a}]"),
            Some(a) => a.to_string(),
            None => String::new(),
        };
        s.push_str(&format!(
            ",hostfwd={proto}:{ip}:{}-{}:{}",
            p.host_port,
            super::passt::GUEST_ADDR,
            p.guest_port
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn hostfwd_per_port() {
        let ports = super::super::publish::parse_all(&["127.0.0.1:8080:80/udp".into()]).unwrap();
        assert!(super::netdev(&ports).ends_with(",hostfwd=udp:127.0.0.1:8080-10.0.2.15:80"));
    }
}
