//! `fcvm exec --name VM [--vm] [-i] [-t] -- CMD…`: run a command in a running VM's container
//! (default) or in the VM itself; `fcvm podman exec [FLAGS] VM CMD…` is the same with
//! podman's syntax (the container first, no `--name`).

use anyhow::Result;
use clap::Args;
use fcvm::paths::Dirs;
use fcvm::vm::names::Name;

#[derive(Args)]
pub struct ExecArgs {
    /// The VM (name or id).
    #[arg(long)]
    name: Name,
    #[command(flatten)]
    flags: ExecFlags,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// `fcvm podman exec`: podman's order, the container then the command.
#[derive(Args)]
pub struct PodmanExecArgs {
    #[command(flatten)]
    flags: ExecFlags,
    /// The container: its VM's name or id.
    container: Name,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// The flags both spellings take.
#[derive(Args)]
pub struct ExecFlags {
    /// Run in the VM, outside the container.
    #[arg(long)]
    vm: bool,
    /// Forward stdin.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Environment variable KEY=VALUE.
    #[arg(short = 'e', long = "env", value_parser = fcvm::run::EnvArg::parse)]
    env: Vec<fcvm::run::EnvArg>,
    /// Read environment variables from FILE (KEY=VALUE lines, # comments; `-e` wins).
    #[arg(long, value_name = "FILE", value_parser = fcvm::run::EnvFile::parse)]
    env_file: Vec<fcvm::run::EnvFile>,
    /// Start the process and return at once, printing nothing; it keeps running (its output
    /// is dropped) until it ends or the VM does.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Working directory.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User (name or uid[:gid]).
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// Give the process every capability (in a `--privileged` container it also has the
    /// VM's devices; podman's `exec --privileged`).
    #[arg(long)]
    privileged: bool,
}

pub async fn run(dirs: &Dirs, a: ExecArgs) -> Result<i32> {
    exec(dirs, a.name, a.flags, a.command).await
}

pub async fn run_podman(dirs: &Dirs, a: PodmanExecArgs) -> Result<i32> {
    exec(dirs, a.container, a.flags, a.command).await
}

async fn exec(dirs: &Dirs, name: Name, f: ExecFlags, command: Vec<String>) -> Result<i32> {
    fcvm::exec::exec(
        dirs,
        fcvm::exec::ExecOptions {
            name: name.into(),
            vm: f.vm,
            command,
            env: fcvm::run::EnvArg::resolved(&fcvm::run::EnvFile::then_env(f.env_file, f.env)),
            detach: f.detach,
            workdir: f.workdir,
            user: f.user,
            interactive: f.interactive,
            tty: f.tty,
            privileged: f.privileged,
        },
    )
    .await
}
