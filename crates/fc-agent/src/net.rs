//! The VM's network interface, configured from the host's `NetConfig` (no DHCP in the guest).
//!
//! Called from Prepare (first boot) and from the restore steps (a clone gets its own address):
//! 1. `eth0` (the virtio-net device; its module is in the initramfs) must exist;
//! 2. MTU, IPv4 address and netmask, up (`SIOCSIFMTU`, `SIOCSIFADDR`, `SIOCSIFNETMASK`,
//!    `SIOCSIFFLAGS`) — setting the address replaces the old one and its subnet route;
//! 3. the default route is deleted (ESRCH is fine) and added via the gateway (`SIOCADDRT`);
//! 4. `/etc/resolv.conf` of the VM from `dns`/`search`; the container's copy is written from
//!    it by `container::copy_resolv_conf`, which runs right after.
//!
//! The container shares the VM's network namespace (crate::oci asks for none), so ports the
//! host publishes reach it directly.

use crate::error::{Error, Result};
use fcvm_proto::NetConfig;
use std::net::Ipv4Addr;

pub const IFACE: &str = "eth0";

/// `10.0.2.15/24` → (address, netmask).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, p) = s.split_once('/').unwrap_or((s, "24"));
    let addr: Ipv4Addr = a.parse().map_err(|_| Error::BadAddress(s.into()))?;
    let p: u32 = p
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(|| Error::BadPrefix(s.into()))?;
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Ok((addr, Ipv4Addr::from(mask)))
}

/// The resolv.conf for `cfg`.
pub fn resolv_conf(cfg: &NetConfig) -> String {
    let mut s = String::new();
    if !cfg.search.is_empty() {
        s.push_str(&format!("search {}\n", cfg.search.join(" ")));
    }
    for d in &cfg.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

struct Sock(libc::c_int);

impl Drop for Sock {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

impl Sock {
    fn new() -> Result<Sock> {
        // SAFETY: a plain datagram socket for interface ioctls.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(Error::Socket(std::io::Error::last_os_error()));
        }
        Ok(Sock(fd))
    }

    fn ioctl<T>(&self, what: &'static str, req: libc::c_ulong, arg: &mut T) -> Result<()> {
        // SAFETY: every request used here takes a pointer to the struct type passed.
        if unsafe { libc::ioctl(self.0, req as _, arg as *mut T) } != 0 {
            return Err(Error::Ioctl(what, std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn ifreq() -> libc::ifreq {
    // SAFETY: ifreq is plain data.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in IFACE.bytes().enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    ifr
}

fn default_route(gw: Ipv4Addr) -> libc::rtentry {
    // SAFETY: rtentry is plain data (rt_dev null: any interface).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gw);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    rt
}

/// Applies `cfg` to eth0 and writes /etc/resolv.conf (idempotent; also used after restore).
pub fn configure(cfg: &NetConfig) -> Result<()> {
    let t0 = std::time::Instant::now();
    if !std::path::Path::new("/sys/class/net").join(IFACE).exists() {
        return Err(Error::NoInterface(IFACE));
    }
    let (addr, mask) = parse_cidr(&cfg.address)?;
    let gw: Option<Ipv4Addr> = match cfg.gateway.as_str() {
        "" => None,
        g => Some(g.parse().map_err(|_| Error::BadGateway(g.into()))?),
    };
    let s = Sock::new()?;
    if cfg.mtu > 0 {
        let mut ifr = ifreq();
        ifr.ifr_ifru.ifru_mtu = cfg.mtu as libc::c_int;
        s.ioctl("SIOCSIFMTU", libc::SIOCSIFMTU, &mut ifr)?;
    }
    let mut ifr = ifreq();
    ifr.ifr_ifru.ifru_addr = sockaddr(addr);
    s.ioctl("SIOCSIFADDR", libc::SIOCSIFADDR, &mut ifr)?;
    let mut ifr = ifreq();
    ifr.ifr_ifru.ifru_netmask = sockaddr(mask);
    s.ioctl("SIOCSIFNETMASK", libc::SIOCSIFNETMASK, &mut ifr)?;
    let mut ifr = ifreq();
    s.ioctl("SIOCGIFFLAGS", libc::SIOCGIFFLAGS, &mut ifr)?;
    // SAFETY: the union member SIOCGIFFLAGS filled in.
    unsafe { ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    s.ioctl("SIOCSIFFLAGS", libc::SIOCSIFFLAGS, &mut ifr)?;
    // Drop every default route (a restored VM may hold the snapshot's), then add ours.
    loop {
        let mut rt = default_route(Ipv4Addr::UNSPECIFIED);
        rt.rt_flags = libc::RTF_UP;
        if s.ioctl("SIOCDELRT", libc::SIOCDELRT, &mut rt).is_err() {
            break;
        }
    }
    if let Some(gw) = gw {
        s.ioctl("SIOCADDRT", libc::SIOCADDRT, &mut default_route(gw))?;
    }
    std::fs::write("/etc/resolv.conf", resolv_conf(cfg))
        .map_err(|e| Error::Write("/etc/resolv.conf".into(), e))?;
    crate::info!(
        "{IFACE}: {} via {} mtu {} in {} ms",
        cfg.address,
        cfg.gateway,
        cfg.mtu,
        t0.elapsed().as_millis()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_resolv() {
        assert_eq!(
            parse_cidr("10.0.2.15/24").unwrap(),
            (
                "10.0.2.15".parse().unwrap(),
                "255.255.255.0".parse().unwrap()
            )
        );
        assert_eq!(parse_cidr("10.1.2.3/32").unwrap().1, Ipv4Addr::BROADCAST);
        assert!(parse_cidr("10.0.2/24").is_err() && parse_cidr("10.0.2.15/33").is_err());
        let cfg = NetConfig {
            dns: vec!["10.0.2.3".into()],
            search: vec!["example".into()],
            ..Default::default()
        };
        assert_eq!(resolv_conf(&cfg), "search example\nnameserver 10.0.2.3\n");
    }
}
