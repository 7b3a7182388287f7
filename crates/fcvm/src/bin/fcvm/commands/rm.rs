//! `fcvm rm NAME…`: remove dead VMs' leftovers; `--force` also stops running ones (SIGTERM,
//! then SIGKILL after `--time` seconds, as podman's `rm -f`). Exit 125 if any fails;
//! `fcvm podman rm` exits as podman's does (1: no such VM, 2: one running without `--force`,
//! 125: anything else; the worst wins).

use anyhow::Result;
use clap::Args;
use fcvm::paths::Dirs;
use fcvm::vm::names::Name;
use fcvm::vm::VmError;

#[derive(Args)]
pub struct RmArgs {
    /// Stop a running VM first.
    #[arg(short, long)]
    force: bool,
    /// Seconds a running VM is given to stop (SIGTERM to its container) before it is killed.
    #[arg(short, long, default_value_t = 10, value_name = "SECONDS")]
    time: u64,
    /// VM names or ids.
    #[arg(required = true)]
    names: Vec<Name>,
}

pub fn run(dirs: &Dirs, a: RmArgs) -> Result<i32> {
    remove(dirs, a, |_| 125)
}

pub fn run_podman(dirs: &Dirs, a: RmArgs) -> Result<i32> {
    remove(dirs, a, |e| match e {
        VmError::NotFound(_) => 1,
        VmError::Running(_) => 2,
        _ => 125,
    })
}

fn remove(dirs: &Dirs, a: RmArgs, code_of: impl Fn(&VmError) -> i32) -> Result<i32> {
    let mut code = 0;
    let force = a.force.then(|| std::time::Duration::from_secs(a.time));
    for name in &a.names {
        match fcvm::vm::find(dirs, name).and_then(|(d, st)| fcvm::vm::remove(dirs, &d, &st, force))
        {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e}");
                code = code.max(code_of(&e));
            }
        }
    }
    Ok(code)
}
