//! `fcvm exec --name VM [--vm] [-i] [-t] -- CMD…`: run a command in a running VM's container
//! (default) or in the VM itself.

use anyhow::Result;
use clap::Args;
use fcvm::paths::Dirs;

#[derive(Args)]
pub struct ExecArgs {
    /// The VM (name or id).
    #[arg(long)]
    name: fcvm::vm::names::Name,
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
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

pub async fn run(dirs: &Dirs, a: ExecArgs) -> Result<i32> {
    fcvm::exec::exec(
        dirs,
        fcvm::exec::ExecOptions {
            name: a.name.into(),
            vm: a.vm,
            command: a.command,
            env: fcvm::run::EnvArg::resolved(&fcvm::run::EnvFile::then_env(a.env_file, a.env)),
            detach: a.detach,
            workdir: a.workdir,
            user: a.user,
            interactive: a.interactive,
            tty: a.tty,
            privileged: a.privileged,
        },
    )
    .await
}
