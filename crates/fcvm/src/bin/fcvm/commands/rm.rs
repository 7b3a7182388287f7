//! `fcvm rm NAME…`: remove dead VMs' leftovers; `--force` also stops running ones.

use anyhow::Result;
use clap::Args;
use fcvm::paths::Dirs;
use fcvm::vm::names::Name;

#[derive(Args)]
pub struct RmArgs {
    /// Stop a running VM first.
    #[arg(short, long)]
    force: bool,
    /// VM names or ids.
    #[arg(required = true)]
    names: Vec<Name>,
}

pub fn run(dirs: &Dirs, a: RmArgs) -> Result<i32> {
    let mut code = 0;
    for name in &a.names {
        match fcvm::vm::find(dirs, name).and_then(|(d, st)| fcvm::vm::remove(&d, &st, a.force)) {
            Ok(()) => println!("{name}"),
            Err(e) => {
                eprintln!("Error: {e}");
                code = 125;
            }
        }
    }
    Ok(code)
}
