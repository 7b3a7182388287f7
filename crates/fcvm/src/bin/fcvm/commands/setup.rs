//! `fcvm setup`: build (or verify) the guest assets and the built-in busybox image.

use anyhow::Result;
use fcvm::paths::Dirs;

pub async fn run(dirs: &Dirs) -> Result<i32> {
    let d = dirs.clone();
    let assets = tokio::task::spawn_blocking(move || -> Result<_> {
        let a = fcvm::assets::ensure(&d, &fcvm::assets::find_agent()?)?;
        fcvm::image::ensure_builtin_busybox(&d)?;
        Ok(a)
    })
    .await??;
    println!(
        "kernel:    {} ({})",
        assets.kernel.display(),
        assets.kernel_version
    );
    println!("initramfs: {}", assets.initramfs.display());
    Ok(0)
}
