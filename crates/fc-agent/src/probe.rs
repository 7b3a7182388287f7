//! HTTP probes for the host's health monitor (`Msg::HttpGet`): the guest has no curl, so the
//! agent does the GET itself, from the VM's network namespace (which the container shares).
//!
//! 1. Each probe runs in its own thread: `http://host[:port][/path]` only, `localhost` →
//!    127.0.0.1, default port 80; a plain HTTP/1.0 GET whose connect, write and read are all
//!    bounded by one deadline (`timeout_ms`).
//! 2. The answer is one final frame on the probe's stream: `HttpStatus{code}` (any status: the
//!    host decides what is healthy) or `Error{Failed, why}`.
//! 3. A new epoch ([`cancel_all`]) silences the probes of the old one: their answers would
//!    land on stream ids the new host has not opened (or has reused).

use crate::channel::Outbox;
use crate::error::{Error, Result};
use fcvm_proto::{Frame, Msg};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Bumped by every new epoch; a probe answers only if it is unchanged since it started.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The status line is all a probe reads; a longer first line is not HTTP.
const MAX_HEAD: usize = 8 * 1024;

/// Drops the answers of every probe still running (called when a new epoch starts).
pub fn cancel_all() {
    GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// Starts a probe answering on `stream`.
pub fn start(stream: u32, url: String, timeout_ms: u32, out: &Outbox) {
    let gen = GENERATION.load(Ordering::SeqCst);
    let tx = out.clone();
    let spawned = crate::pool::run(Box::new(move || {
        let msg = answer(get(&url, Duration::from_millis(timeout_ms.max(1) as u64)));
        if GENERATION.load(Ordering::SeqCst) == gen {
            tx.send(Frame { stream, msg });
        }
    }));
    if let Err(e) = spawned {
        out.send(Frame {
            stream,
            msg: answer(Err(Error::Thread("probe", e))),
        });
    }
}

fn answer(r: Result<u16>) -> Msg {
    match r {
        Ok(code) => Msg::HttpStatus { code },
        Err(e) => e.to_msg(),
    }
}

/// `http://host[:port][/path]` split into (host, port, path-with-query).
pub fn parse_url(url: &str) -> Result<(String, u16, String)> {
    let bad = |why| Error::ProbeUrl {
        url: url.into(),
        why,
    };
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("HTTP://"))
        .ok_or_else(|| bad("only http:// URLs can be probed"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = path.split('#').next().unwrap_or("");
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    // userinfo is not sent (no auth support); drop it so it is not taken for a host.
    let authority = authority.rsplit('@').next().unwrap_or("");
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, tail) = v6
            .split_once(']')
            .ok_or_else(|| bad("unterminated [IPv6] host"))?;
        (h.to_string(), tail.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let port = match port {
        None | Some("") => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::ProbePort {
                url: url.into(),
                port: p.into(),
            })?,
    };
    Ok((host, port, path))
}

fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>> {
    let host = if host.eq_ignore_ascii_case("localhost") {
        "127.0.0.1"
    } else {
        host
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Resolve(host.into(), e))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::NoAddress(host.into()));
    }
    Ok(addrs)
}

/// GETs `url` and returns the response's status code.
pub fn get(url: &str, timeout: Duration) -> Result<u16> {
    let deadline = Instant::now() + timeout;
    let timed_out = || Error::ProbeTimeout {
        url: url.into(),
        timeout,
    };
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(timed_out)
    };
    // A read or write that timed out is the probe's deadline, not an I/O failure.
    let io = |e: std::io::Error, op: fn(String, std::io::Error) -> Error| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => timed_out(),
        _ => op(url.into(), e),
    };
    let (host, port, path) = parse_url(url)?;
    let mut last = None;
    let mut conn = None;
    for addr in resolve(&host, port)? {
        match TcpStream::connect_timeout(&addr, left()?) {
            Ok(c) => {
                conn = Some(c);
                break;
            }
            Err(e) => last = Some(Error::Connect(addr, e)),
        }
    }
    let mut conn = match conn {
        Some(c) => c,
        None => return Err(last.unwrap_or(Error::NoAddress(host))),
    };
    let host_header = if port == 80 {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let req = format!(
        "GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: fcvm-health\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    conn.set_write_timeout(Some(left()?))
        .map_err(|e| io(e, Error::ProbeSend))?;
    conn.write_all(req.as_bytes())
        .map_err(|e| io(e, Error::ProbeSend))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(nl) = head.iter().position(|&b| b == b'\n') {
            return status(&head[..nl]).ok_or_else(|| Error::NotHttp {
                url: url.into(),
                head: String::from_utf8_lossy(&head[..nl.min(80)]).into_owned(),
            });
        }
        if head.len() > MAX_HEAD {
            return Err(Error::StatusLineTooLong(url.into()));
        }
        conn.set_read_timeout(Some(left()?))
            .map_err(|e| io(e, Error::ProbeRead))?;
        match conn.read(&mut buf) {
            Ok(0) => {
                return Err(Error::ClosedEarly {
                    url: url.into(),
                    bytes: head.len(),
                })
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e, Error::ProbeRead)),
        }
    }
}

/// `HTTP/1.x NNN reason` → NNN.
fn status(line: &[u8]) -> Option<u16> {
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok().filter(|c| (100..600).contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        let p = |u| parse_url(u).unwrap();
        assert_eq!(p("http://localhost"), ("localhost".into(), 80, "/".into()));
        assert_eq!(
            p("http://localhost:8080/a/b?x=1#frag"),
            ("localhost".into(), 8080, "/a/b?x=1".into())
        );
        assert_eq!(p("http://h?q"), ("h".into(), 80, "/?q".into()));
        assert_eq!(p("http://u:pw@h:81/"), ("h".into(), 81, "/".into()));
        assert_eq!(p("http://[::1]:9/x"), ("::1".into(), 9, "/x".into()));
        assert!(parse_url("https://h/").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
        assert!(parse_url("http://h:0/").is_err());
    }

    #[test]
    fn status_lines() {
        assert_eq!(status(b"HTTP/1.0 200 OK\r"), Some(200));
        assert_eq!(status(b"HTTP/1.1 404"), Some(404));
        assert_eq!(status(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(status(b"HTTP/1.1 2000 x"), None);
    }

    /// Serves one connection with `reply` (after reading the request) on a free port.
    fn serve_once(reply: &'static [u8], delay: Duration) -> (u16, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 512];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            std::thread::sleep(delay);
            let _ = c.write_all(reply);
            String::from_utf8(req).unwrap()
        });
        (port, t)
    }

    #[test]
    fn get_reports_status_and_sends_a_plain_request() {
        let (port, t) = serve_once(b"HTTP/1.0 204 No Content\r\n\r\n", Duration::ZERO);
        let code = get(
            &format!("http://localhost:{port}/health?x=1"),
            Duration::from_secs(5),
        );
        assert_eq!(code.ok(), Some(204));
        let req = t.join().unwrap();
        assert!(req.starts_with("GET /health?x=1 HTTP/1.0\r\n"), "{req}");
        assert!(
            req.contains(&format!("Host: localhost:{port}\r\n")),
            "{req}"
        );

        let (port, _t) = serve_once(b"HTTP/1.1 503 Busy\r\n\r\n", Duration::ZERO);
        let code = get(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5));
        assert_eq!(code.ok(), Some(503));
    }

    #[test]
    fn get_fails_on_refusal_garbage_and_timeout() {
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let e = get(&format!("http://localhost:{port}/"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(e, Error::Connect(..)), "{}", e.report());
        assert!(e.wire().contains("refused"), "{}", e.report());

        let (port, _t) = serve_once(b"garbage\n", Duration::ZERO);
        let e = get(&format!("http://localhost:{port}/"), Duration::from_secs(5)).unwrap_err();
        assert!(e.wire().contains("not an HTTP response"), "{}", e.report());

        // The answer comes long after the probe's limit (the thread is left to its sleep), so
        // ending before it shows the limit, however loaded the host.
        let (port, _t) = serve_once(b"HTTP/1.0 200 OK\r\n\r\n", Duration::from_secs(30));
        let t0 = Instant::now();
        let e = get(
            &format!("http://localhost:{port}/"),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(e, Error::ProbeTimeout { .. }), "{}", e.report());
        assert!(
            e.wire().ends_with("no answer within 300 ms"),
            "{}",
            e.report()
        );
        assert!(t0.elapsed() < Duration::from_secs(20));
    }
}
