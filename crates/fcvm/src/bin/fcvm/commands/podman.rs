//! `fcvm podman run`: podman's flags, mapped onto [`fcvm::run::RunOptions`]; and podman's
//! spelling of the other verbs a podman user types (`exec`, `ps`, `logs`, `rm`), each the fcvm
//! command of that name.

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};
use fcvm::paths::Dirs;
use fcvm::vmm::VmmKind;

#[derive(Subcommand)]
pub enum PodmanCommand {
    /// Run a container image in a new microVM.
    Run(RunArgs),
    /// Run a command in a running container: `podman exec [FLAGS] CONTAINER CMD…`.
    Exec(super::exec::PodmanExecArgs),
    /// List the containers' VMs (`fcvm ls`).
    #[command(alias = "ls")]
    Ps(super::ls::LsArgs),
    /// Print the output of a detached run (`fcvm logs`).
    Logs(super::logs::LogsArgs),
    /// Remove containers' VMs (`fcvm rm`, with podman's exit codes: 1 no such, 2 running).
    Rm(super::rm::RmArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Name of the VM (and the container's default hostname).
    #[arg(long)]
    name: Option<fcvm::vm::names::Name>,
    /// Environment variable KEY=VALUE (KEY alone takes fcvm's own value).
    #[arg(short = 'e', long = "env", value_parser = fcvm::run::EnvArg::parse)]
    env: Vec<fcvm::run::EnvArg>,
    /// Virtual CPUs.
    #[arg(long = "cpu", alias = "cpus", default_value_t = 1)]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long = "mem", alias = "memory", default_value_t = 512)]
    mem: u32,
    /// Working directory inside the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User (name or uid[:gid]) inside the container.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Override the image's entrypoint (a command or a JSON array).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Hostname of the VM and container (default: the name).
    #[arg(long)]
    hostname: Option<String>,
    /// The VMM (only qemu runs here: KVM when usable, else TCG).
    #[arg(long, value_enum)]
    hypervisor: Option<VmmKind>,
    /// Run in the background and print the VM's id once the container runs (its output goes
    /// to `fcvm logs`; stop it with `fcvm rm --force`).
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Health check flags (boxed: they would make every command's enum large).
    #[command(flatten)]
    health: Box<HealthArgs>,
    /// Workload flags (boxed, as the health flags).
    #[command(flatten)]
    workload: Box<WorkloadArgs>,
    /// Remove the VM when it ends (always on: fcvm VMs are ephemeral).
    #[arg(long, default_value_t = true)]
    rm: bool,
    /// Require HTTPS and verify certificates when pulling (default: HTTPS except loopback).
    #[arg(long)]
    tls_verify: Option<bool>,
    /// Never save or restore snapshots for this run (always boot cold).
    #[arg(long)]
    no_snapshot: bool,
    /// Registry credentials USER:PASSWORD.
    #[arg(long)]
    creds: Option<String>,
    /// Most the image may unpack: SIZE[,ENTRIES], e.g. 512M or 8G,2000000 (default 16G and
    /// 1000000 entries, or $FCVM_UNPACK_LIMIT). A cached image is not unpacked again.
    #[arg(long, value_name = "SIZE[,ENTRIES]")]
    unpack_limit: Option<fcvm::image::UnpackLimit>,
    /// Network: rootless (default, no root needed), bridged (root: a netns per VM) or none.
    #[arg(long, default_value = "rootless")]
    network: fcvm::network::NetworkMode,
    /// Publish a port: [ip:][hostPort:]containerPort[/tcp|udp] (comma lists, repeatable).
    #[arg(short = 'p', long = "publish", value_delimiter = ',',
          value_parser = fcvm::network::publish::parse_one)]
    publish: Vec<fcvm::network::publish::Publish>,
    /// Image reference: oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, builtin:busybox,
    /// a name in the host's podman store, or a registry reference.
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The flags for real workloads: environment files, labels, disk size, privileges.
#[derive(Args)]
pub struct WorkloadArgs {
    /// Read environment variables from FILE (KEY=VALUE lines, # comments; `-e` wins).
    #[arg(long, value_name = "FILE", value_parser = fcvm::run::EnvFile::parse)]
    env_file: Vec<fcvm::run::EnvFile>,
    /// A label KEY=VALUE (repeatable), shown by `fcvm ls` and matched by its `--filter label=`.
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = fcvm::run::parse_label)]
    labels: Vec<(String, String)>,
    /// Size of the container's writable layer, e.g. 512M or 20G (default 10G; sparse: it costs
    /// host disk only as the container writes).
    #[arg(long, value_name = "SIZE", value_parser = fcvm::run::parse_rootfs_size)]
    rootfs_size: Option<u64>,
    /// Every capability, the VM's devices, a writable /sys and no masked paths (the VM is
    /// the boundary).
    #[arg(long)]
    privileged: bool,
    /// An extra disk (repeatable): SIZE makes a new sparse ext4 (e.g. 2G), PATH uses an
    /// ext4 image file in place; mounted in the container at GUEST (default /mnt/diskN).
    #[arg(long = "disk", value_name = "SIZE|PATH[:GUEST]", value_parser = fcvm::disks::DiskArg::parse)]
    disks: Vec<fcvm::disks::DiskArg>,
    /// Map a host directory into the container: HOST:GUEST[:ro] (repeatable; absolute paths;
    /// served over the agent channel, kept across snapshots; see docs/volumes.md).
    #[arg(long = "map", short = 'v', visible_alias = "volume", value_name = "HOST:GUEST[:ro]",
          value_parser = fcvm::map::Map::parse)]
    maps: Vec<fcvm::map::Map>,
}

/// podman's `--health-*` flags, plus fcvm's `--health-check URL`.
#[derive(Args)]
pub struct HealthArgs {
    /// Health check: HTTP GET of this http:// URL from inside the VM; 2xx is healthy.
    #[arg(long, value_name = "URL")]
    health_check: Option<String>,
    /// Health check command run in the container (exit 0 is healthy); "none" disables the
    /// image's HEALTHCHECK.
    #[arg(long, value_name = "CMD")]
    health_cmd: Option<String>,
    /// Time between health checks once started (e.g. 30s, 1m; default: the image's, or 30s).
    #[arg(long, value_name = "DURATION", value_parser = fcvm::health::parse_duration)]
    health_interval: Option<Duration>,
    /// Time one health check may take before it counts as failed (default 30s).
    #[arg(long, value_name = "DURATION", value_parser = fcvm::health::parse_duration)]
    health_timeout: Option<Duration>,
    /// Consecutive failed checks before the container is unhealthy (default 3).
    #[arg(long, value_name = "N")]
    health_retries: Option<u32>,
    /// Failures in this initial period do not count (default 0s).
    #[arg(long, value_name = "DURATION", value_parser = fcvm::health::parse_duration)]
    health_start_period: Option<Duration>,
}

pub async fn run(dirs: &Dirs, cmd: PodmanCommand) -> Result<i32> {
    match cmd {
        PodmanCommand::Run(a) => run_container(dirs, a).await,
        PodmanCommand::Exec(a) => super::exec::run_podman(dirs, a).await,
        PodmanCommand::Ps(a) => super::ls::run(dirs, a),
        PodmanCommand::Logs(a) => super::logs::run(dirs, a),
        PodmanCommand::Rm(a) => super::rm::run_podman(dirs, a),
    }
}

async fn run_container(dirs: &Dirs, a: RunArgs) -> Result<i32> {
    // -d: this process only waits for the detached owner (the same command, run again).
    let detached = fcvm::run::detach::claim_ready_fd();
    if a.detach && detached.is_none() {
        return fcvm::run::detach::spawn();
    }
    let creds = match a.creds {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => Some((u.to_string(), p.to_string())),
            None => anyhow::bail!("Invalid --creds: expected USER:PASSWORD"),
        },
        None => None,
    };
    let health = fcvm::health::HealthFlags {
        check_url: a.health.health_check,
        cmd: a.health.health_cmd,
        interval: a.health.health_interval,
        timeout: a.health.health_timeout,
        retries: a.health.health_retries,
        start_period: a.health.health_start_period,
    };
    health.validate().map_err(anyhow::Error::msg)?;
    let unpack_limit = match a.unpack_limit {
        Some(l) => l,
        None => fcvm::image::UnpackLimit::from_env()?.unwrap_or_default(),
    };
    let disks = fcvm::disks::plan(&a.workload.disks)?;
    let opts = fcvm::run::RunOptions {
        no_snapshot: a.no_snapshot,
        name: a.name.map(Into::into),
        image: a.image,
        command: a.command,
        env: fcvm::run::EnvFile::then_env(a.workload.env_file, a.env),
        cpus: a.cpus,
        mem_mib: a.mem,
        workdir: a.workdir,
        user: a.user,
        entrypoint: a.entrypoint,
        hostname: a.hostname,
        hypervisor: a.hypervisor,
        interactive: a.interactive,
        tty: a.tty,
        pull: fcvm::image::PullOptions {
            tls_verify: a.tls_verify,
            creds,
            unpack_limit,
        },
        network: fcvm::network::NetworkOptions {
            mode: a.network,
            publish: a.publish,
        },
        health,
        detached,
        labels: a.workload.labels.into_iter().collect(),
        shape: fcvm::run::Shape {
            rw_disk_mib: a
                .workload
                .rootfs_size
                .unwrap_or(fcvm::run::DEFAULT_RW_DISK_MIB),
            privileged: a.workload.privileged,
            disks,
            maps: a.workload.maps,
        },
    };
    fcvm::run::run(dirs, opts).await
}
