//! `fcvm snapshot create VM --tag NAME`: asks the VM's owner, over its exec socket, to
//! snapshot the VM (the owner does it, so a client that dies mid-way cannot leave the VM
//! paused; see [`super::server`]).

use anyhow::Context;
use fcvm_proto::Msg;
use tokio::net::UnixStream;

use super::server::EXEC_SOCK;
use crate::session::Session;

/// How long the owner may take to save the snapshot.
const SNAPSHOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

pub async fn request_snapshot(
    dirs: &crate::paths::Dirs,
    vm: &str,
    name: &str,
) -> anyhow::Result<()> {
    crate::snapshot::validate_name(name)?;
    let (dir, st) = crate::vm::find(dirs, vm)?;
    let status = st.observed();
    if !status.can_snapshot() {
        anyhow::bail!("VM {vm} is not running (it is {status})");
    }
    let conn = UnixStream::connect(dir.path.join(EXEC_SOCK))
        .await
        .with_context(|| format!("VM {vm} does not accept requests"))?;
    let session = Session::client(conn);
    session
        .request(
            Msg::SnapshotRequest { name: name.into() },
            SNAPSHOT_TIMEOUT,
            |m| match m {
                Msg::SnapshotDone { .. } => Some(Ok(())),
                Msg::SnapshotFailed { error } => Some(Err(error)),
                _ => None,
            },
        )
        .await
        .with_context(|| format!("Snapshot of VM {vm}"))
}
