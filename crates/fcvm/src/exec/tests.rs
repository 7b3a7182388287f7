//! The exec server between a test agent and exec clients, over sockets, no VM: what it relays,
//! what it refuses, and that credit holds end to end.

use std::sync::Arc;
use std::time::Duration;

use fcvm_proto::{
    Frame, Msg, ProcessSpec, Target, INITIAL_OUTPUT_CREDIT, INITIAL_STDIN_CREDIT, MAX_CHUNK,
};
use tokio::net::UnixStream;

use super::server::{serve, ExecServer, Snapshotter};
use crate::session::test_peer::{pair, Peer};
use crate::session::Session;
use crate::snapshot::SnapshotError;

/// An owner with a test agent, serving on a socket in `dir`.
fn owner(
    dir: &std::path::Path,
    snap: Option<Snapshotter>,
) -> (ExecServer, Peer, std::path::PathBuf) {
    let (host, agent) = pair();
    let session = Arc::new(Session::client(host));
    let sock = dir.join("exec.sock");
    let env = vec!["PATH=/bin".into(), "A=1".into()];
    (serve(&sock, session, env, snap).unwrap(), agent, sock)
}

async fn client(sock: &std::path::Path) -> Session {
    Session::client(UnixStream::connect(sock).await.unwrap())
}

fn spec(env: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: vec!["cat".into()],
        env: env.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Credit the agent is granted until `total` is reached (any other frame fails the test).
async fn credit_reaches(agent: &mut Peer, total: u64) {
    let mut got = 0;
    while got < total {
        match agent.recv().await.msg {
            Msg::Credit(n) => got += n as u64,
            m => panic!("unexpected {m:?}"),
        }
    }
    assert_eq!(got, total);
}

#[tokio::test]
async fn output_is_held_to_the_clients_credit() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut agent, sock) = owner(dir.path(), None);
    let c = client(&sock).await;
    let mut p = c.start(spec(&["A=2", "B=3"]), Target::ContainerExec).await;
    let credit = p.manual_credit();
    let start = agent.recv().await;
    let id = start.stream;
    // A container exec gets the container's environment under its own.
    assert_eq!(
        start.msg,
        Msg::Start {
            spec: spec(&["PATH=/bin", "A=2", "B=3"]),
            target: Target::ContainerExec
        }
    );
    agent
        .send(
            id,
            Msg::Started {
                pid: 9,
                spawn_us: 1,
            },
        )
        .await;
    let window = INITIAL_OUTPUT_CREDIT as usize / MAX_CHUNK;
    for _ in 0..window {
        agent.send(id, Msg::Stdout(vec![7; MAX_CHUNK])).await;
    }
    assert!(p.wait_started().await);
    for _ in 0..window {
        assert_eq!(p.recv().await, Some(Msg::Stdout(vec![7; MAX_CHUNK])));
    }
    // Written to the client's socket: the agent may send one more window, which the owner
    // holds while the client does not drain — and grants nothing more.
    credit_reaches(&mut agent, INITIAL_OUTPUT_CREDIT as u64).await;
    for _ in 0..window {
        agent.send(id, Msg::Stdout(vec![8; MAX_CHUNK])).await;
    }
    assert_eq!(agent.recv_within(Duration::from_millis(300)).await, None);
    // The client drains: the held window comes through, and the agent is granted it.
    credit.drained(INITIAL_OUTPUT_CREDIT as usize);
    for _ in 0..window {
        let m = p.recv().await;
        assert_eq!(m, Some(Msg::Stdout(vec![8; MAX_CHUNK])));
        credit.drained(MAX_CHUNK);
    }
    credit_reaches(&mut agent, INITIAL_OUTPUT_CREDIT as u64).await;
    agent.send(id, Msg::Exit { code: 4, run_us: 0 }).await;
    assert_eq!(p.recv().await, Some(Msg::Exit { code: 4, run_us: 0 }));
}

#[tokio::test]
async fn stdin_beyond_the_agents_credit_ends_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut agent, sock) = owner(dir.path(), None);
    let c = client(&sock).await;
    let mut p = c.start(spec(&[]), Target::Vm).await;
    let id = agent.recv().await.stream;
    let chunks = INITIAL_STDIN_CREDIT as usize / MAX_CHUNK;
    for _ in 0..=chunks {
        assert!(p.send(Msg::Stdin(vec![1; MAX_CHUNK])).await);
    }
    for _ in 0..chunks {
        assert_eq!(agent.recv().await.msg, Msg::Stdin(vec![1; MAX_CHUNK]));
    }
    assert_eq!(
        agent.recv().await,
        Frame {
            stream: id,
            msg: Msg::Close
        }
    );
    match p.recv().await {
        Some(Msg::Error { message, .. }) => assert_eq!(message, "stdin sent beyond its credit"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn refusals_and_a_client_that_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, mut agent, sock) = owner(dir.path(), None);
    let mut raw = Peer::new(UnixStream::connect(&sock).await.unwrap());
    let start = |target| Msg::Start {
        spec: spec(&[]),
        target,
    };
    let refused = |f: Frame| match f.msg {
        Msg::Error { message, .. } => (f.stream, message),
        m => panic!("{m:?}"),
    };
    raw.send(0, start(Target::Vm)).await;
    let (s, why) = refused(raw.recv().await);
    assert_eq!(
        (s, why.as_str()),
        (0, "a process cannot run on the control stream")
    );
    raw.send(5, start(Target::Container)).await;
    assert!(refused(raw.recv().await).1.contains("main process"));
    raw.send(5, start(Target::Vm)).await;
    raw.send(5, start(Target::Vm)).await;
    assert!(refused(raw.recv().await).1.contains("already runs"));
    let id = agent.recv().await.stream;
    // The client goes away: its process is closed.
    drop(raw);
    assert_eq!(
        agent.recv().await,
        Frame {
            stream: id,
            msg: Msg::Close
        }
    );
}

#[tokio::test]
async fn snapshot_requests_get_the_owners_answer() {
    let dir = tempfile::tempdir().unwrap();
    let snap: Snapshotter = Arc::new(|name: String| {
        Box::pin(async move {
            match name.as_str() {
                "ok" => Ok(()),
                _ => Err(SnapshotError::Busy(name)),
            }
        })
    });
    let (_server, _agent, sock) = owner(dir.path(), Some(snap));
    let ask = |name: &'static str| {
        let sock = sock.clone();
        async move {
            let c = client(&sock).await;
            let req = Msg::SnapshotRequest { name: name.into() };
            c.request(req, crate::session::test_peer::LIMIT, |m| match m {
                Msg::SnapshotDone { name } => Some(Ok(name)),
                Msg::SnapshotFailed { error } => Some(Err(error)),
                _ => None,
            })
            .await
        }
    };
    assert_eq!(ask("ok").await.unwrap(), "ok");
    let e = ask("taken").await.unwrap_err().to_string();
    assert_eq!(e, "Snapshot \"taken\" is being written by another fcvm");
    let dir2 = tempfile::tempdir().unwrap();
    let (_server2, _agent2, sock2) = owner(dir2.path(), None);
    let c = client(&sock2).await;
    let req = Msg::SnapshotRequest { name: "x".into() };
    let e = c.request(req, crate::session::test_peer::LIMIT, |m| match m {
        Msg::SnapshotFailed { error } => Some(Err::<(), _>(error)),
        _ => None,
    });
    assert_eq!(
        e.await.unwrap_err().to_string(),
        "this VM cannot be snapshotted"
    );
}
