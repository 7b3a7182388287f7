//! What the task service hands containerd besides its replies: task events (published
//! through containerd's TTRPC events service), timestamps, statuses and ttrpc errors.
//!
//! Events go through [`Events`]: one bounded queue, forwarded in order by one task, so no
//! reply waits for containerd to handle its event (runc's shim forwards them the same way).

use std::time::SystemTime;

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::protos::events::task::TaskExit;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::types::task::Status as PStatus;
use containerd_shim::Context;

use tokio::sync::{mpsc, oneshot};

use crate::process::{Exited, Proc, Status};

/// Events a slow containerd may leave queued before a publisher waits.
const QUEUE: usize = 64;

enum Queued {
    Event {
        topic: &'static str,
        event: Box<dyn MessageDyn>,
    },
    /// Answered once every event queued before it went out.
    Flush(oneshot::Sender<()>),
}

/// The ordered, bounded event queue to containerd.
#[derive(Clone)]
pub struct Events {
    tx: mpsc::Sender<Queued>,
}

impl Events {
    /// Starts the task forwarding events to containerd (in namespace `ns`).
    pub fn spawn(publisher: RemotePublisher, ns: String) -> Events {
        let (tx, mut rx) = mpsc::channel(QUEUE);
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                match q {
                    Queued::Event { topic, event } => publish(&publisher, &ns, topic, event).await,
                    Queued::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        Events { tx }
    }

    /// Queues `event`; waits only while the queue is full.
    pub async fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let _ = self.tx.send(Queued::Event { topic, event }).await;
    }

    /// Waits until every event queued so far was handed to containerd.
    pub async fn flush(&self) {
        let (done, sent) = oneshot::channel();
        if self.tx.send(Queued::Flush(done)).await.is_ok() {
            let _ = sent.await;
        }
    }
}

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

async fn publish(publisher: &RemotePublisher, ns: &str, topic: &str, event: Box<dyn MessageDyn>) {
    if let Err(e) = publisher
        .publish(Context::default(), topic, ns, event)
        .await
    {
        tracing::warn!("cannot publish {topic}: {e}");
    }
}
