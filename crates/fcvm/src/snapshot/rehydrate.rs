//! Turning a full migration stream (RAM inside) into the snapshot layout (RAM file + device
//! state), for snapshots of VMs that were themselves restored (see `create.rs`).
//!
//! A helper QEMU with the snapshot's devices starts paused with `-incoming defer` and a fresh,
//! sparse, *shared* RAM file; loading the stream writes the guest's pages into that file; the
//! helper then saves its device state with `x-ignore-shared` and is killed. It never runs a
//! single guest instruction, and its network backends are inert (`-netdev user` stand-ins), so
//! nothing of the source VM is touched.

use std::path::Path;
use std::time::Duration;

use super::{io_err, Manifest, SnapshotError, DEVSTATE, RAM_FILE, RW_DISK};
use crate::vmm::qemu::qmp::Qmp;
use crate::vmm::{self, Memory};

/// The full stream, kept in the temp snapshot directory until rehydrated.
pub const FULL_STREAM: &str = "full-stream";

const STEP_TIMEOUT: Duration = Duration::from_secs(120);

pub async fn rehydrate(dir: &Path, m: &Manifest, net_args: &[String]) -> Result<(), SnapshotError> {
    let err = |what: &str, e: String| SnapshotError::Vmm(m.name.clone(), format!("{what}: {e}"));
    let ram = dir.join(RAM_FILE);
    std::fs::File::create(&ram)
        .and_then(|f| f.set_len((m.mem_mib as u64) << 20))
        .map_err(io_err(&ram))?;
    let helper_dir = dir.join("helper");
    std::fs::create_dir_all(&helper_dir).map_err(io_err(&helper_dir))?;
    let memory = Memory::File {
        path: ram.clone(),
        shared: true,
    };
    let spec = m.vm_spec(
        &helper_dir,
        dir.join(RW_DISK),
        memory,
        inert_backends(net_args),
    );
    let mut vm = vmm::start(m.backend, &spec).map_err(|e| err("helper VMM", e.to_string()))?;
    let r: Result<(), SnapshotError> = async {
        let q = |e: crate::vmm::qemu::qmp::QmpError| err("helper", e.to_string());
        let mut qmp = Qmp::connect(&helper_dir.join(vmm::qemu::cmdline::QMP_SOCK), STEP_TIMEOUT)
            .await
            .map_err(q)?;
        let full = dir.join(FULL_STREAM);
        qmp.migrate_in_from(&full).await.map_err(q)?;
        qmp.wait_migration(STEP_TIMEOUT).await.map_err(q)?;
        qmp.set_ignore_shared(true).await.map_err(q)?;
        let dev = dir.join(DEVSTATE);
        qmp.migrate_to(&dev).await.map_err(q)?;
        qmp.wait_migration(STEP_TIMEOUT).await.map_err(q)?;
        Ok(())
    }
    .await;
    vm.kill();
    let r = r.map_err(|e| match crate::vmm::qemu::log_tail(&helper_dir) {
        Some(l) => err("helper", format!("{e}; qemu: {l}")),
        None => e,
    });
    if std::env::var_os("FCVM_KEEP_HELPER").is_none() {
        let _ = std::fs::remove_dir_all(&helper_dir);
    }
    let _ = std::fs::remove_file(dir.join(FULL_STREAM));
    r
}

/// The same network devices with backends that reach nothing: `-netdev TYPE,id=X,…` becomes
/// `-netdev user,id=X,restrict=on`.
fn inert_backends(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        out.push(a.clone());
        if a == "-netdev" {
            if let Some(v) = it.next() {
                let id = v
                    .split(',')
                    .find_map(|p| p.strip_prefix("id="))
                    .unwrap_or("n0");
                out.push(format!("user,id={id},restrict=on"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn network_backends_become_inert_devices_stay() {
        let a: Vec<String> = [
            "-netdev",
            "stream,id=n0,server=off,addr.type=unix,addr.path=/x/passt.sock",
            "-device",
            "virtio-net-device,netdev=n0,mac=52:54:00:00:00:01",
        ]
        .map(String::from)
        .to_vec();
        let b = super::inert_backends(&a);
        assert_eq!(b[1], "user,id=n0,restrict=on");
        assert_eq!(b[3], a[3]);
    }
}
