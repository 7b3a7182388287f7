//! Names, owner records, teardown and reaping of bridged networks (see `bridged.rs`).
//!
//! - Every object of a VM's network is named after the VM id's first 8 hex digits (`ID8`):
//!   netns `fcvm-ID8`, links `fcvmID8{t,h,n}`, host nat rules with the comment `fcvm-ID8`.
//! - `/run/fcvm-net/ID8.json` records the owning fcvm process (pid + start time) and the /30
//!   slot it holds; slots are claimed under `/run/fcvm-net/.lock`.
//! - [`teardown`] removes all of it, tolerating "already gone"; [`reap_orphans`] tears down
//!   the networks whose owner died (SIGKILL of fcvm), independent of any data directory.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use super::NetworkError;

pub const RUN_DIR: &str = "/run/fcvm-net";

/// Runs a tool, returning its stdout or an error with its stderr.
pub fn run(args: &[&str]) -> Result<String, NetworkError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| NetworkError::Io(format!("running {}", args[0]), e))?;
    if !out.status.success() {
        return Err(NetworkError::Setup(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of one VM's network objects.
#[derive(Debug, Clone)]
pub struct Names {
    pub id8: String,
    pub netns: String,
    pub tap: String,
    pub host: String,
    pub peer: String,
    pub tag: String,
}

impl Names {
    pub fn new(vm_id: &str) -> Names {
        let id8: String = vm_id.chars().take(8).collect();
        Names {
            netns: format!("fcvm-{id8}"),
            tap: format!("fcvm{id8}t"),
            host: format!("fcvm{id8}h"),
            peer: format!("fcvm{id8}n"),
            tag: format!("fcvm-{id8}"),
            id8,
        }
    }
}

/// Removes every object named after the VM (each step tolerates "already gone").
pub fn teardown(n: &Names) {
    let _ = run(&["ip", "netns", "del", &n.netns]);
    let _ = run(&["ip", "link", "del", &n.tap]);
    let _ = run(&["ip", "link", "del", &n.host]);
    if let Ok(rules) = run(&["iptables", "-t", "nat", "-S"]) {
        for r in rules.lines().filter(|r| {
            r.contains(&format!("\"{}\"", n.tag)) || r.contains(&format!(" {} ", n.tag))
        }) {
            let Some(rest) = r.strip_prefix("-A ") else {
                continue;
            };
            let mut args = vec![
                "iptables".to_string(),
                "-t".into(),
                "nat".into(),
                "-D".into(),
            ];
            args.extend(split_rule(rest));
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let _ = run(&a);
        }
    }
    let _ = std::fs::remove_file(Path::new(RUN_DIR).join(format!("{}.json", n.id8)));
}

/// Splits an `iptables -S` rule into words (quoted comments stay one word, unquoted).
fn split_rule(r: &str) -> Vec<String> {
    let (mut out, mut cur, mut q) = (Vec::new(), String::new(), false);
    for c in r.chars() {
        match c {
            '"' => q = !q,
            ' ' if !q => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Tears down the networks whose owning fcvm process is gone.
pub fn reap_orphans() {
    let Ok(dir) = std::fs::read_dir(RUN_DIR) else {
        return;
    };
    for e in dir.flatten() {
        let p = e.path();
        let Some(id8) = p.file_stem().and_then(|s| s.to_str()).map(String::from) else {
            continue;
        };
        let Ok(v) =
            std::fs::read_to_string(&p).map(|t| serde_json::from_str::<serde_json::Value>(&t))
        else {
            continue;
        };
        let Ok(v) = v else { continue };
        let (pid, start) = (
            v["pid"].as_u64().unwrap_or(0) as u32,
            v["pid_start"].as_u64().unwrap_or(0),
        );
        if pid != 0 && crate::procfs::process_alive(pid, start) {
            continue;
        }
        tracing::info!("reaping the bridged network of dead VM {id8}");
        teardown(&Names::new(&id8));
    }
}

/// Picks a free /30 index (under the caller's lock) and records the owner.
pub fn claim(n: &Names) -> Result<u32, NetworkError> {
    let used: Vec<u64> = std::fs::read_dir(RUN_DIR)
        .map(|d| {
            d.flatten()
                .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                .filter_map(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .filter_map(|v| v["slot"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    let slot = (0..16384u32)
        .find(|s| !used.contains(&u64::from(*s)))
        .ok_or_else(|| NetworkError::Setup("no free bridged subnet".into()))?;
    let me = std::process::id();
    let rec = serde_json::json!({
        "pid": me,
        "pid_start": crate::procfs::process_start(me).unwrap_or(0),
        "slot": slot,
    });
    crate::util::write_atomic(
        &Path::new(RUN_DIR).join(format!("{}.json", n.id8)),
        rec.to_string().as_bytes(),
    )
    .map_err(|e| NetworkError::Io(format!("writing a record in {RUN_DIR}"), e))?;
    Ok(slot)
}

pub fn slot_addrs(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 202, 0, 0)) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_rules() {
        let n = Names::new("0123456789abcdef");
        assert_eq!(
            (n.netns.as_str(), n.tap.as_str()),
            ("fcvm-01234567", "fcvm01234567t")
        );
        assert!(n.host.len() <= 15);
        assert_eq!(
            slot_addrs(1),
            ("10.202.0.5".parse().unwrap(), "10.202.0.6".parse().unwrap())
        );
        assert_eq!(
            split_rule("POSTROUTING -m comment --comment \"fcvm-1 x\" -j MASQUERADE"),
            [
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "fcvm-1 x",
                "-j",
                "MASQUERADE"
            ]
        );
    }
}
