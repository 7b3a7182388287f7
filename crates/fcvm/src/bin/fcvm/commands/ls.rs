//! `fcvm ls`: every VM with its observed status. VMs nothing runs of any more (their fcvm
//! was killed, and their VMM with it) are removed first, saying so on stderr.
//! `--filter label=KEY[=VALUE]` (podman's, repeatable: a VM must match all) narrows the list.

use anyhow::Result;
use clap::Args;
use fcvm::paths::Dirs;

#[derive(Args)]
pub struct LsArgs {
    /// Print JSON (an array of VM records with the observed status).
    #[arg(long)]
    json: bool,
    /// `json` is `--json` (podman's `ps --format json`); `table` the default.
    #[arg(long, value_enum, value_name = "json|table")]
    format: Option<Format>,
    /// Accepted for podman's `ps -a`: every VM is always listed (one ends with its
    /// container, so none is stopped and hidden).
    #[arg(short = 'a', long)]
    all: bool,
    /// Only VMs with this label: label=KEY or label=KEY=VALUE (repeatable; all must match).
    #[arg(short = 'f', long = "filter", value_name = "label=KEY[=VALUE]", value_parser = parse_filter)]
    filter: Vec<LabelFilter>,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
enum Format {
    Json,
    Table,
}

/// One `--filter label=KEY[=VALUE]`.
#[derive(Clone)]
pub struct LabelFilter {
    key: String,
    value: Option<String>,
}

fn parse_filter(s: &str) -> Result<LabelFilter, String> {
    let Some(rest) = s.strip_prefix("label=") else {
        return Err(format!("unsupported filter {s:?}: only label=KEY[=VALUE]"));
    };
    let (key, value) = match rest.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (rest, None),
    };
    if key.is_empty() {
        return Err(format!("unsupported filter {s:?}: the label has no key"));
    }
    Ok(LabelFilter {
        key: key.into(),
        value,
    })
}

pub fn run(dirs: &Dirs, a: LsArgs) -> Result<i32> {
    // Bridged networks whose owning fcvm died (SIGKILL) are removed before reporting.
    if nix::unistd::geteuid().is_root() {
        fcvm::network::netns::reap_orphans();
    }
    reap(dirs);
    let mut vms = fcvm::vm::list(dirs);
    vms.retain(|(_, st)| {
        a.filter
            .iter()
            .all(|f| st.has_label(&f.key, f.value.as_deref()))
    });
    let _ = a.all;
    if a.json || a.format == Some(Format::Json) {
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
        "{:<20} {:<12} {:<8} {:<8} {:<9} {:<10} {:<28} {:<19} LABELS",
        "NAME", "ID", "PID", "BACKEND", "STATUS", "HEALTH", "IMAGE", "STARTED"
    );
    for (_, st) in vms {
        let health = st
            .health
            .map(|h| format!("{h:?}").to_lowercase())
            .unwrap_or_else(|| "-".into());
        let labels: Vec<String> = st.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let labels = if labels.is_empty() {
            "-".to_string()
        } else {
            labels.join(",")
        };
        println!(
            "{:<20} {:<12} {:<8} {:<8} {:<9} {:<10} {:<28} {:<19} {}",
            st.name,
            st.id,
            st.vmm_pid.unwrap_or(st.pid),
            // to_string: the backend's Display ignores the column width.
            st.backend.to_string(),
            st.observed(),
            health,
            st.image,
            st.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            labels
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
