//! What the task service hands containerd besides its replies: task events (published
//! through containerd's TTRPC events service), timestamps, statuses and ttrpc errors.

use std::time::SystemTime;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::Status as PStatus;
use containerd_shim::Context;

use crate::process::{Exited, Proc, Status};

pub fn err(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

pub fn not_found(what: &str) -> ttrpc::Error {
    err(ttrpc::Code::NOT_FOUND, format!("{what}: not found"))
}

/// The full chain of an error, on one line (what containerd shows the user).
pub fn chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

pub fn ts(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

pub fn pstatus(s: Status) -> PStatus {
    match s {
        Status::Created => PStatus::CREATED,
        Status::Running => PStatus::RUNNING,
        Status::Stopped => PStatus::STOPPED,
    }
}

pub fn exit_event(cid: &str, p: &Proc, pid: u32, e: Exited) -> TaskExit {
    TaskExit {
        container_id: cid.into(),
        id: if p.exec_id.is_empty() {
            cid.into()
        } else {
            p.exec_id.clone()
        },
        pid,
        exit_status: e.code,
        exited_at: ts(e.at),
        ..Default::default()
    }
}

pub async fn publish(
    publisher: &RemotePublisher,
    ns: &str,
    topic: &str,
    event: Box<dyn MessageDyn>,
) {
    if let Err(e) = publisher
        .publish(Context::default(), topic, ns, event)
        .await
    {
        tracing::warn!("cannot publish {topic}: {e}");
    }
}
