//! `--publish` in podman's syntax: `[ip:][hostPort:]containerPort[/proto]`.
//!
//! - Comma lists and repeated flags both add ports (`-p 8080:80,8443:443 -p 53:53/udp`).
//! - `ip` is IPv4 or a bracketed IPv6 address (`[::1]:8080:80`); default: every address.
//! - A missing or empty host port (`80`, `127.0.0.1::80`) takes a free port, as podman does.
//! - `proto` is `tcp` (default) or `udp`.
//!
//! [`parse_one`] is clap's value parser for one item (the flag splits comma lists);
//! [`resolve`] proves each host port free by binding it: a busy port is an
//! error before anything is created (the bind is released at once; the port is taken again
//! by the forwarder a moment later).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};

use serde::{Deserialize, Serialize};

use super::NetworkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// One published port. `host_port` 0 means "any free port" until [`resolve`] picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

impl Publish {
    /// podman's notation, e.g. `127.0.0.1:8080->80/tcp`.
    pub fn display(&self) -> String {
        let ip = match self.host_ip {
            Some(IpAddr::V6(a)) => format!("[{a}]"),
            Some(IpAddr::V4(a)) => a.to_string(),
            None => "0.0.0.0".into(),
        };
        format!(
            "{ip}:{}->{}/{}",
            self.host_port,
            self.guest_port,
            self.proto.as_str()
        )
    }

    fn bind_addr(&self) -> SocketAddr {
        let ip = self.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        SocketAddr::new(ip, self.host_port)
    }
}

fn port(s: &str, whole: &str) -> Result<u16, NetworkError> {
    let bad = || NetworkError::Publish(whole.into(), "ports are numbers from 1 to 65535".into());
    let p: u16 = s.parse().map_err(|_| bad())?;
    if p == 0 {
        return Err(bad());
    }
    Ok(p)
}

/// Parses one `[ip:][hostPort:]containerPort[/proto]`.
pub fn parse_one(s: &str) -> Result<Publish, NetworkError> {
    let err = |why: &str| NetworkError::Publish(s.into(), why.into());
    let (rest, proto) = match s.rsplit_once('/') {
        Some((r, "tcp")) => (r, Proto::Tcp),
        Some((r, "udp")) => (r, Proto::Udp),
        Some((_, p)) => return Err(err(&format!("protocol {p:?} is not tcp or udp"))),
        None => (s, Proto::Tcp),
    };
    let (ip, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (ip, after) = r
            .split_once("]:")
            .ok_or_else(|| err("expected [IPv6]:hostPort:containerPort"))?;
        let ip: std::net::Ipv6Addr = ip.parse().map_err(|_| err("bad IPv6 address"))?;
        (Some(IpAddr::V6(ip)), after)
    } else {
        match rest.matches(':').count() {
            0 | 1 => (None, rest),
            2 => {
                let (ip, after) = rest.split_once(':').unwrap_or_default();
                let ip: Ipv4Addr = ip.parse().map_err(|_| err("bad IPv4 address"))?;
                (Some(IpAddr::V4(ip)), after)
            }
            _ => return Err(err("too many ':' (bracket IPv6 addresses)")),
        }
    };
    let (host, guest) = match ports.split_once(':') {
        Some((h, g)) => (h, g),
        None if ip.is_some() => return Err(err("expected ip:hostPort:containerPort")),
        None => ("", ports),
    };
    if host.contains('-') || guest.contains('-') {
        return Err(err("port ranges are not supported"));
    }
    let host_port = if host.is_empty() { 0 } else { port(host, s)? };
    Ok(Publish {
        host_ip: ip,
        host_port,
        guest_port: port(guest, s)?,
        proto,
    })
}

/// Rejects a host port published twice (per protocol).
pub fn check_unique(ports: &[Publish]) -> Result<(), NetworkError> {
    for (i, p) in ports.iter().enumerate() {
        if p.host_port != 0
            && ports[..i]
                .iter()
                .any(|q| q.host_port == p.host_port && q.proto == p.proto)
        {
            return Err(NetworkError::Publish(
                p.display(),
                "host port published twice".into(),
            ));
        }
    }
    Ok(())
}

/// Parses every value (each may be a comma list) and checks for duplicates.
#[cfg(test)]
pub(crate) fn parse_all(values: &[String]) -> Result<Vec<Publish>, NetworkError> {
    let mut out = Vec::new();
    for v in values {
        for item in v.split(',') {
            out.push(parse_one(item.trim())?);
        }
    }
    check_unique(&out)?;
    Ok(out)
}

/// Proves every host port free by binding it (and picks free ports for host port 0).
pub fn resolve(mut ports: Vec<Publish>) -> Result<Vec<Publish>, NetworkError> {
    for p in &mut ports {
        let addr = p.bind_addr();
        let bound = match p.proto {
            Proto::Tcp => TcpListener::bind(addr).and_then(|l| l.local_addr()),
            Proto::Udp => UdpSocket::bind(addr).and_then(|s| s.local_addr()),
        };
        match bound {
            Ok(a) => p.host_port = a.port(),
            Err(e) => {
                return Err(NetworkError::PortBusy(
                    format!("{addr}/{}", p.proto.as_str()),
                    e,
                ))
            }
        }
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Publish {
        parse_one(s).unwrap()
    }

    #[test]
    fn podman_forms() {
        assert_eq!(
            p("127.0.0.1:8080:80"),
            Publish {
                host_ip: Some("127.0.0.1".parse().unwrap()),
                host_port: 8080,
                guest_port: 80,
                proto: Proto::Tcp
            }
        );
        let q = p("8080:80/udp");
        assert_eq!(
            (q.host_ip, q.host_port, q.guest_port, q.proto),
            (None, 8080, 80, Proto::Udp)
        );
        assert_eq!(p("80").host_port, 0);
        assert_eq!(p("127.0.0.1::80").host_port, 0);
        assert_eq!(p("[::1]:8080:80").host_ip, Some("::1".parse().unwrap()));
        assert_eq!(
            p("127.0.0.1:8080:80/tcp").display(),
            "127.0.0.1:8080->80/tcp"
        );
        let all = parse_all(&["8080:80,8443:443".into(), "53:53/udp".into()]).unwrap();
        assert_eq!(all.len(), 3);
    }

    #[test]
    fn malformed_is_rejected() {
        for bad in [
            "",
            "x",
            "80/sctp",
            "0:80",
            "8080:0",
            "70000:80",
            "1.2.3:80:80",
            "a:b:c:d",
            "8080-8081:80-81",
            "127.0.0.1:80",
            "[::1:80:80",
        ] {
            assert!(parse_one(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_all(&["8080:80,8080:81".into()]).is_err());
        assert!(parse_all(&["8080:80,8080:80/udp".into()]).is_ok());
    }

    #[test]
    fn busy_port_is_found_and_free_port_picked() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = l.local_addr().unwrap().port();
        let r = resolve(vec![p(&format!("127.0.0.1:{busy}:80"))]);
        assert!(matches!(r, Err(NetworkError::PortBusy(..))), "{r:?}");
        let r = resolve(vec![p("127.0.0.1::80")]).unwrap();
        assert_ne!(r[0].host_port, 0);
    }
}
