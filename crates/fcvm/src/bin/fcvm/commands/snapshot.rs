//! `fcvm snapshot create|run|ls|rm` and `fcvm snapshots prune`.

use anyhow::Result;
use clap::Subcommand;
use fcvm::paths::Dirs;
use fcvm::snapshot::{self, SnapshotKind};
use fcvm::vm::names::Name;

#[derive(Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a running VM (it pauses briefly, then runs on).
    Create {
        /// The VM (name or id).
        vm: Name,
        /// Name of the snapshot.
        #[arg(long)]
        tag: Name,
    },
    /// Start a clone of a snapshot.
    Run {
        /// The snapshot.
        snapshot: Name,
        /// Name of the clone (also its hostname).
        #[arg(long)]
        name: Option<Name>,
        /// Run this shell command in the clone, print its output, remove the clone.
        #[arg(long)]
        exec: Option<String>,
        /// rootless, bridged or none (must match the snapshot's devices).
        #[arg(long)]
        network: Option<fcvm::network::NetworkMode>,
        /// Publish a port of the clone: [ip:][hostPort:]containerPort[/proto].
        #[arg(short = 'p', long = "publish", value_delimiter = ',',
              value_parser = fcvm::network::publish::parse_one)]
        publish: Vec<fcvm::network::publish::Publish>,
        /// A label KEY=VALUE (repeatable), added to the snapshot's (this one wins).
        #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = fcvm::run::parse_label)]
        labels: Vec<(String, String)>,
        /// Serve another host directory at one of the snapshot's map guest paths:
        /// HOST:GUEST[:ro] (repeatable; see docs/volumes.md).
        #[arg(long = "map", short = 'v', visible_alias = "volume", value_name = "HOST:GUEST[:ro]",
              value_parser = fcvm::map::Map::parse)]
        maps: Vec<fcvm::map::Map>,
    },
    /// List snapshots.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a snapshot (refused while a VM restored from it runs).
    Rm {
        #[arg(required = true)]
        names: Vec<Name>,
    },
}

pub async fn run(dirs: &Dirs, cmd: SnapshotCommand) -> Result<i32> {
    match cmd {
        SnapshotCommand::Create { vm, tag } => {
            fcvm::exec::request_snapshot(dirs, &vm, &tag).await?;
            println!("{tag}");
            Ok(0)
        }
        SnapshotCommand::Run {
            snapshot,
            name,
            exec,
            network,
            publish,
            labels,
            maps,
        } => {
            let mut net = fcvm::network::NetworkOptions::default();
            if let Some(m) = network {
                net.mode = m;
            }
            net.publish = publish;
            fcvm::run::clone::run_clone(
                dirs,
                fcvm::run::clone::CloneOptions {
                    snapshot,
                    name: name.map(Into::into),
                    exec,
                    network: net,
                    health: Default::default(),
                    labels: labels.into_iter().collect(),
                    maps,
                },
            )
            .await
        }
        SnapshotCommand::Ls { json } => {
            let all = snapshot::list(dirs);
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(0);
            }
            println!(
                "{:<28} {:<12} {:<20} {:<28} CREATED",
                "NAME", "KIND", "SOURCE", "IMAGE"
            );
            for m in all {
                println!(
                    "{:<28} {:<12} {:<20} {:<28} {}",
                    m.name,
                    serde_json::to_value(m.kind)?.as_str().unwrap_or(""),
                    m.source,
                    m.image,
                    m.created_at.format("%Y-%m-%d %H:%M:%S")
                );
            }
            Ok(0)
        }
        SnapshotCommand::Rm { names } => {
            let mut code = 0;
            for n in names {
                match snapshot::remove(dirs, &n) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("Error: {e}");
                        code = 125;
                    }
                }
            }
            Ok(code)
        }
    }
}

/// Removes every image-cache and startup snapshot no running VM uses (they are rebuilt on
/// demand); user snapshots stay. VMs whose fcvm was killed are reaped first: they run
/// nothing, so they pin nothing. Then the containerd shim's cached root filesystems whose
/// layers containerd removed (`fcvm::bundle::prune`), listed as `tree:<key>`.
pub fn prune(dirs: &Dirs) -> Result<i32> {
    super::ls::reap(dirs);
    for m in snapshot::list(dirs) {
        if m.kind == SnapshotKind::User {
            continue;
        }
        // A manifest's name is its directory's; one that is no name cannot be addressed.
        let Ok(name) = Name::new(&m.name) else {
            continue;
        };
        match snapshot::remove(dirs, &name) {
            Ok(()) => println!("{}", m.name),
            Err(e) => eprintln!("kept {}: {e}", m.name),
        }
    }
    for key in fcvm::bundle::prune::prune(dirs) {
        println!("tree:{key}");
    }
    Ok(0)
}
