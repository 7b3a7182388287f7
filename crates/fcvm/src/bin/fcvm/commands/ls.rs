//! `fcvm ls`: every VM with its observed status. VMs nothing runs of any more (their fcvm
//! was killed, and their VMM with it) are removed first, saying so on stderr.

use anyhow::Result;
use clap::Args;
use fcvm::paths::Dirs;

#[derive(Args)]
pub struct LsArgs {
    /// Print JSON (an array of VM records with the observed status).
    #[arg(long)]
    json: bool,
}

pub fn run(dirs: &Dirs, a: LsArgs) -> Result<i32> {
    // Bridged networks whose owning fcvm died (SIGKILL) are removed before reporting.
    if nix::unistd::geteuid().is_root() {
        fcvm::network::netns::reap_orphans();
    }
    reap(dirs);
    let vms = fcvm::vm::list(dirs);
    if a.json {
        let rows: Vec<serde_json::Value> = vms
            .iter()
            .map(|(_, st)| {
                let mut v = serde_json::to_value(st).expect("state serialises");
                v["observed"] = st.observed().as_str().into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(0);
    }
    println!(
        "{:<20} {:<12} {:<8} {:<8} {:<9} {:<10} {:<28} STARTED",
        "NAME", "ID", "PID", "BACKEND", "STATUS", "HEALTH", "IMAGE"
    );
    for (_, st) in vms {
        let health = st
            .health
            .map(|h| format!("{h:?}").to_lowercase())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<20} {:<12} {:<8} {:<8} {:<9} {:<10} {:<28} {}",
            st.name,
            st.id,
            st.vmm_pid.unwrap_or(st.pid),
            // to_string: the backend's Display ignores the column width.
            st.backend.to_string(),
            st.observed(),
            health,
            st.image,
            st.started_at.format("%Y-%m-%d %H:%M:%S")
        );
    }
    Ok(0)
}

/// Removes the VMs whose fcvm died without cleaning up, one stderr line each (stdout stays
/// the listing, JSON included).
pub fn reap(dirs: &Dirs) {
    for st in fcvm::vm::reap_abandoned(dirs) {
        eprintln!("fcvm: removed dead VM {} (its fcvm was killed)", st.name);
    }
}
