//! `fcvm`: the command line. Parses arguments with clap and calls the library; each command
//! lives in `commands/<verb>.rs`. Exit codes follow podman: 125 for fcvm's own errors, else
//! the container's code (126/127 for a command that cannot run / is not found).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command line prints"
)]

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fcvm",
    version,
    about = "Run OCI container images inside microVMs"
)]
struct Cli {
    /// More log output (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the guest kernel and initramfs (done on demand by `podman run` too).
    Setup,
    /// Podman-compatible commands.
    Podman {
        #[command(subcommand)]
        command: commands::podman::PodmanCommand,
    },
    /// Run a command in a running VM (its container by default).
    Exec(commands::exec::ExecArgs),
    /// List VMs.
    #[command(alias = "ps")]
    Ls(commands::ls::LsArgs),
    /// Print the output of a detached run (`podman run -d`).
    Logs(commands::logs::LogsArgs),
    /// Snapshots: create, run (clone), ls, rm.
    Snapshot {
        #[command(subcommand)]
        command: commands::snapshot::SnapshotCommand,
    },
    /// Snapshot maintenance.
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Remove a VM's leftovers (a dead VM), or stop and remove a running one with --force.
    Rm(commands::rm::RmArgs),
    /// Serve the E2B sandbox API (REST and envd) for the E2B SDKs.
    Serve(commands::serve::ServeArgs),
}

#[derive(Subcommand)]
enum SnapshotsCommand {
    /// Remove image-cache and startup snapshots that no running VM uses.
    Prune,
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // podman's contract: a usage error is fcvm's own error (125), on one line.
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            eprintln!("Error: {first}");
            std::process::exit(125);
        }
    };
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    // A VM's owner (and the API server) lives long and must never block on a stderr that
    // nobody reads (docs/security.md §7): its log lines go through a bounded queue to a
    // thread of their own, and are dropped when the queue is full. Short commands write
    // directly, keeping their lines in order with what they print.
    let long_lived = matches!(
        cli.command,
        Command::Podman {
            command: commands::podman::PodmanCommand::Run(_)
        } | Command::Snapshot { .. }
            | Command::Serve(_)
    );
    let (writer, log_guard) = if long_lived {
        let (w, g) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(1024)
            .thread_name("fcvm-log")
            .finish(std::io::stderr());
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(w),
            Some(g),
        )
    } else {
        (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
            None,
        )
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FCVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(writer)
        .with_target(false)
        .without_time()
        .init();
    let dirs = fcvm::paths::Dirs::from_env();
    if let Err(e) = dirs.prepare() {
        eprintln!("Error: data directory {}: {e}", dirs.root.display());
        std::process::exit(125);
    }
    // One thread: the VMM's parent-death signal is tied to the thread that spawned it, and
    // this one lives as long as the process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Command::Setup => commands::setup::run(&dirs).await,
            Command::Podman { command } => commands::podman::run(&dirs, command).await,
            Command::Exec(a) => commands::exec::run(&dirs, a).await,
            Command::Snapshot { command } => commands::snapshot::run(&dirs, command).await,
            Command::Snapshots {
                command: SnapshotsCommand::Prune,
            } => commands::snapshot::prune(&dirs),
            Command::Ls(a) => commands::ls::run(&dirs, a),
            Command::Logs(a) => commands::logs::run(&dirs, a),
            Command::Rm(a) => commands::rm::run(&dirs, a),
            Command::Serve(a) => commands::serve::run(&dirs, a).await,
        }
    });
    // The queued log lines first (waiting at most ~1 s for a stalled stderr), then the error.
    drop(log_guard);
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {}", chain(&e));
            125
        }
    };
    drop(rt);
    std::process::exit(code);
}

/// "outer: inner: innermost" on one line.
fn chain(e: &anyhow::Error) -> String {
    e.chain()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}
