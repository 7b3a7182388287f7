//! `fcvm podman run`: podman's flags, mapped onto [`fcvm::run::RunOptions`].

use anyhow::Result;
use clap::{Args, Subcommand};
use fcvm::paths::Dirs;
use fcvm::vmm::VmmKind;

#[derive(Subcommand)]
pub enum PodmanCommand {
    /// Run a container image in a new microVM.
    Run(RunArgs),
}

#[derive(Args)]
pub struct RunArgs {
    /// Name of the VM (and the container's default hostname).
    #[arg(long)]
    name: Option<String>,
    /// Environment variable KEY=VALUE (KEY alone takes fcvm's own value).
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
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
    /// qemu or firecracker (firecracker needs KVM).
    #[arg(long)]
    hypervisor: Option<VmmKind>,
    /// Keep stdin open and forward it.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Remove the VM when it ends (always on: fcvm VMs are ephemeral).
    #[arg(long, default_value_t = true)]
    rm: bool,
    /// Require HTTPS and verify certificates when pulling (default: HTTPS except loopback).
    #[arg(long)]
    tls_verify: Option<bool>,
    /// Registry credentials USER:PASSWORD.
    #[arg(long)]
    creds: Option<String>,
    /// Image reference: oci:DIR[:TAG], oci-archive:FILE, docker-archive:FILE, builtin:busybox,
    /// a name in the host's podman store, or a registry reference.
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub async fn run(dirs: &Dirs, cmd: PodmanCommand) -> Result<i32> {
    let PodmanCommand::Run(a) = cmd;
    let creds = match a.creds {
        Some(c) => match c.split_once(':') {
            Some((u, p)) => Some((u.to_string(), p.to_string())),
            None => anyhow::bail!("Invalid --creds: expected USER:PASSWORD"),
        },
        None => None,
    };
    let opts = fcvm::run::RunOptions {
        name: a.name,
        image: a.image,
        command: a.command,
        env: a.env,
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
        },
        network: fcvm::network::NetworkOptions::default(),
        health: fcvm::health::HealthFlags::default(),
    };
    fcvm::run::run(dirs, opts).await
}
