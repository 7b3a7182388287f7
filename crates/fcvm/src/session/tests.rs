//! The host session over a socket pair, no VM: a test peer on the other end speaks the real
//! codec as the agent would (or as a hostile one might).

use std::time::Duration;

use fcvm_proto::{
    AgentInfo, Frame, LogLevel, Msg, ProcessSpec, Target, INITIAL_OUTPUT_CREDIT, MAX_CHUNK,
};

use super::queue::GRANT_STEP;
use super::test_peer::{pair, Peer, LIMIT};
use super::{Session, SessionError, Wait};

fn ack(epoch: u64, version: u32) -> Msg {
    Msg::HelloAck {
        epoch,
        version,
        info: AgentInfo {
            agent_version: format!("agent of epoch {epoch}"),
            ..Default::default()
        },
    }
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn hello_ignores_a_stale_epoch() {
    let mut alive = || None;
    let (host, mut peer) = pair();
    let agent = async {
        let f = peer.recv().await;
        assert!(
            matches!(f.msg, Msg::Hello { epoch: 7, version, .. } if version == fcvm_proto::PROTOCOL_VERSION)
        );
        // An answer to an older host's Hello, then ours.
        peer.send(0, ack(6, fcvm_proto::PROTOCOL_VERSION)).await;
        peer.send(0, Msg::Prepared).await;
        peer.send(0, ack(7, fcvm_proto::PROTOCOL_VERSION)).await;
        peer
    };
    let (s, _peer) = tokio::join!(
        Session::hello(host, 7, &mut alive, Wait::new(LIMIT), None),
        agent
    );
    let s = s.unwrap();
    assert_eq!(s.info.agent_version, "agent of epoch 7");
    assert_eq!(s.epoch, 7);
}

#[tokio::test]
async fn hello_of_another_version_fails() {
    let mut alive = || None;
    let (host, mut peer) = pair();
    let agent = async {
        peer.recv().await;
        peer.send(0, ack(7, 99)).await;
        peer
    };
    let (s, _peer) = tokio::join!(
        Session::hello(host, 7, &mut alive, Wait::new(LIMIT), None),
        agent
    );
    assert!(matches!(s, Err(SessionError::Version(99))));
}

#[tokio::test]
async fn restore_waits_for_its_own_epoch() {
    let mut alive = || None;
    let (host, mut peer) = pair();
    let agent = async {
        assert!(matches!(
            peer.recv().await.msg,
            Msg::Restored { epoch: 9, .. }
        ));
        peer.send(0, Msg::RestoreComplete { epoch: 8 }).await;
        peer.send(
            0,
            Msg::RestoreFailed {
                epoch: 8,
                error: "old".into(),
            },
        )
        .await;
        peer.send(
            0,
            Msg::RestoreFailed {
                epoch: 9,
                error: "no network".into(),
            },
        )
        .await;
        peer
    };
    let plan = Default::default();
    let (s, _peer) = tokio::join!(
        Session::restored(host, 9, plan, &mut alive, Wait::new(LIMIT), None),
        agent
    );
    match s {
        Err(SessionError::Agent(e)) => assert_eq!(e, "restore failed: no network"),
        other => panic!("{:?}", other.map(|s| s.epoch)),
    }
}

#[tokio::test]
async fn a_vm_that_exits_ends_the_wait() {
    let (host, _peer) = pair();
    let mut polls = 0;
    let mut exited = || {
        polls += 1;
        (polls > 3).then(|| "killed by signal 9".to_string())
    };
    let r = Session::hello(host, 7, &mut exited, Wait::new(LIMIT), None).await;
    assert!(matches!(r, Err(SessionError::VmExited(why)) if why == "killed by signal 9"));
}

#[tokio::test]
async fn a_silent_agent_times_out() {
    let mut alive = || None;
    let (host, _peer) = pair();
    let r = Session::hello(
        host,
        7,
        &mut alive,
        Wait::new(Duration::from_millis(100)),
        None,
    );
    assert!(matches!(r.await, Err(SessionError::Timeout(_))));
}

#[tokio::test]
async fn process_stream_start_output_exit() {
    let (host, mut peer) = pair();
    let s = Session::client(host);
    let mut p = s.start(spec(&["echo", "hi"]), Target::ContainerExec).await;
    let f = peer.recv().await;
    assert_eq!(f.stream, p.id);
    assert_eq!(
        f.msg,
        Msg::Start {
            spec: spec(&["echo", "hi"]),
            target: Target::ContainerExec
        }
    );
    peer.send(p.id + 100, Msg::Stdout(b"not ours".to_vec()))
        .await;
    peer.send(p.id, Msg::Stdout(b"hi\n".to_vec())).await;
    peer.send(
        p.id,
        Msg::Started {
            pid: 5,
            spawn_us: 1,
        },
    )
    .await;
    peer.send(p.id, Msg::Stderr(b"warn\n".to_vec())).await;
    peer.send(p.id, Msg::Exit { code: 3, run_us: 2 }).await;
    peer.send(p.id, Msg::Stdout(b"after the end".to_vec()))
        .await;
    // Started is taken out first; what came before it stays queued in order.
    assert!(p.wait_started().await);
    assert_eq!(p.recv().await, Some(Msg::Stdout(b"hi\n".to_vec())));
    assert_eq!(p.recv().await, Some(Msg::Stderr(b"warn\n".to_vec())));
    assert_eq!(p.recv().await, Some(Msg::Exit { code: 3, run_us: 2 }));
    // A process that ended sends no Close when dropped: the next frame is the next Start.
    drop(p);
    let q = s.start(spec(&["true"]), Target::Vm).await;
    let f = peer.recv().await;
    assert_eq!((f.stream, matches!(f.msg, Msg::Start { .. })), (q.id, true));
}

#[tokio::test]
async fn a_dropped_process_is_closed_after_its_start() {
    let (host, mut peer) = pair();
    let s = Session::client(host);
    let p = s.start(spec(&["sleep", "9"]), Target::ContainerExec).await;
    let id = p.id;
    drop(p);
    assert!(matches!(peer.recv().await.msg, Msg::Start { .. }));
    assert_eq!(
        peer.recv().await,
        Frame {
            stream: id,
            msg: Msg::Close
        }
    );
}

#[tokio::test]
async fn a_lost_connection_ends_streams_and_requests() {
    let (host, mut peer) = pair();
    let s = Session::client(host);
    let mut p = s.start(spec(&["cat"]), Target::ContainerExec).await;
    peer.recv().await;
    peer.send(p.id, Msg::Stdout(b"last words".to_vec())).await;
    drop(peer);
    assert_eq!(p.recv().await, Some(Msg::Stdout(b"last words".to_vec())));
    assert_eq!(p.recv().await, None);
    let r = s.request(Msg::Shutdown, LIMIT, |_| Some(Ok(()))).await;
    assert!(matches!(r, Err(SessionError::Lost)), "{r:?}");
    // A stream opened after the loss is over at once.
    let mut late = s.start(spec(&["true"]), Target::Vm).await;
    assert_eq!(late.recv().await, None);
}

/// Credit frames the peer receives until `until` arrives (the marker sent after them).
async fn credits_before(peer: &mut Peer, until: &Msg) -> u64 {
    let mut total = 0;
    loop {
        let f = peer.recv().await;
        match f.msg {
            Msg::Credit(n) => total += n as u64,
            m if &m == until => return total,
            m => panic!("unexpected {m:?}"),
        }
    }
}

#[tokio::test]
async fn output_credit_is_granted_only_as_it_is_drained() {
    let (host, mut peer) = pair();
    let s = Session::client(host);
    let mut p = s
        .start(spec(&["cat", "/dev/zero"]), Target::ContainerExec)
        .await;
    let credit = p.manual_credit();
    peer.recv().await;
    let chunks = INITIAL_OUTPUT_CREDIT as usize / MAX_CHUNK;
    for _ in 0..chunks {
        peer.send(p.id, Msg::Stdout(vec![0; MAX_CHUNK])).await;
    }
    // Taken out but not written out yet: no credit.
    for _ in 0..chunks {
        assert_eq!(p.recv().await, Some(Msg::Stdout(vec![0; MAX_CHUNK])));
    }
    credit.drained(GRANT_STEP as usize - 1);
    let mark = Msg::Signal(1);
    assert!(p.send(mark.clone()).await);
    assert_eq!(credits_before(&mut peer, &mark).await, 0);
    // Written out: granted, and the peer may send that much more.
    credit.drained(INITIAL_OUTPUT_CREDIT as usize - GRANT_STEP as usize + 1);
    assert!(p.send(mark.clone()).await);
    assert_eq!(
        credits_before(&mut peer, &mark).await,
        INITIAL_OUTPUT_CREDIT as u64
    );
    for _ in 0..chunks {
        peer.send(p.id, Msg::Stdout(vec![1; MAX_CHUNK])).await;
    }
    peer.send(p.id, Msg::Exit { code: 0, run_us: 0 }).await;
    for _ in 0..chunks {
        assert_eq!(p.recv().await, Some(Msg::Stdout(vec![1; MAX_CHUNK])));
    }
    assert!(matches!(p.recv().await, Some(Msg::Exit { .. })));
}

#[tokio::test]
async fn output_beyond_the_credit_ends_the_stream() {
    let (host, mut peer) = pair();
    let s = Session::client(host);
    let mut p = s.start(spec(&["yes"]), Target::ContainerExec).await;
    let mut other = s.start(spec(&["true"]), Target::ContainerExec).await;
    peer.recv().await;
    peer.recv().await;
    // A peer ignoring credit: the host must not keep what it sends.
    for _ in 0..INITIAL_OUTPUT_CREDIT as usize / MAX_CHUNK + 1 {
        peer.send(p.id, Msg::Stdout(vec![b'y'; MAX_CHUNK])).await;
    }
    assert_eq!(
        peer.recv().await,
        Frame {
            stream: p.id,
            msg: Msg::Close
        }
    );
    match p.recv().await {
        Some(Msg::Error { message, .. }) => assert!(message.contains("beyond its credit")),
        other => panic!("{other:?}"),
    }
    // The other stream goes on.
    peer.send(other.id, Msg::Exit { code: 0, run_us: 0 }).await;
    assert!(matches!(
        other.recv().await,
        Some(Msg::Exit { code: 0, .. })
    ));
}

#[tokio::test]
async fn probes_answer_and_take_no_output() {
    let (host, mut peer) = pair();
    let s = std::sync::Arc::new(Session::client(host));
    let agent = async {
        let f = peer.recv().await;
        assert!(matches!(&f.msg, Msg::HttpGet { url, .. } if url == "http://localhost/"));
        peer.send(f.stream, Msg::HttpStatus { code: 204 }).await;
        let f = peer.recv().await;
        peer.send(f.stream, Msg::Stdout(b"<html>".to_vec())).await;
        peer
    };
    let probes = async {
        let a = s.probe_http("http://localhost/", LIMIT).await;
        let b = s.probe_http("http://localhost/", LIMIT).await;
        (a, b)
    };
    let ((a, b), _peer) = tokio::join!(probes, agent);
    assert_eq!(a.unwrap(), 204);
    assert!(matches!(b, Err(SessionError::Agent(e)) if e.contains("credit")));
}

#[tokio::test]
async fn a_flood_of_logs_and_replies_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let (host, mut peer) = pair();
    let s = Session::over(host, 1, Some(log.clone()));
    let line = "z".repeat(2000);
    for i in 0..5000u64 {
        let level = LogLevel::Debug;
        peer.send(
            0,
            Msg::Log {
                level,
                message: line.clone(),
            },
        )
        .await;
        peer.send(0, Msg::RestoreComplete { epoch: i }).await;
    }
    peer.send(0, Msg::Prepared).await;
    // The request's reply is the last frame sent: every earlier one was handled by now.
    let r = s
        .request(Msg::Shutdown, LIMIT, |m| {
            (m == Msg::Prepared).then_some(Ok(()))
        })
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert!(s.control.held() <= super::queue::CONTROL_QUEUE);
    let written = std::fs::read_to_string(&log).unwrap();
    let lines = written.lines().count();
    assert!(lines > 0 && lines < 5000, "{lines} lines");
    assert!(written.len() as u64 <= super::agent_log::MAX_SIZE);
}

/// A file is read chunk by chunk (one request each, from the next offset until `eof`), written
/// in chunks (the first truncates), listed page by page; the agent's errors keep their kind.
#[tokio::test]
async fn file_requests_move_files_in_chunks() {
    use crate::session::fs::{FileReader, FsError};
    use fcvm_proto::{FsEntry, FsErrorKind, FsOp, FsReply, MAX_CHUNK};
    let (host, mut peer) = pair();
    let s = std::sync::Arc::new(Session::client(host));
    let agent = async {
        for (want_offset, data, eof) in [
            (0, vec![1; MAX_CHUNK], false),
            (MAX_CHUNK as u64, vec![2; 5], true),
        ] {
            let f = peer.recv().await;
            match &f.msg {
                Msg::FsRequest(r) => assert_eq!(
                    (r.user.as_str(), &r.op),
                    (
                        "user",
                        &FsOp::Read {
                            path: "/f".into(),
                            offset: want_offset,
                            len: MAX_CHUNK as u32
                        }
                    )
                ),
                other => panic!("{other:?}"),
            }
            peer.send(f.stream, Msg::FsReply(FsReply::Data { data, eof }))
                .await;
        }
        for want in [(0, MAX_CHUNK, true), (MAX_CHUNK as u64, 1, false)] {
            let f = peer.recv().await;
            let Msg::FsRequest(r) = &f.msg else { panic!() };
            let FsOp::Write {
                offset,
                data,
                truncate,
                ..
            } = &r.op
            else {
                panic!("{:?}", r.op)
            };
            assert_eq!((*offset, data.len(), *truncate), want);
            let e = FsEntry {
                path: "/w".into(),
                ..Default::default()
            };
            peer.send(f.stream, Msg::FsReply(FsReply::Entry(e))).await;
        }
        for (skip, more) in [(0, true), (1, false)] {
            let f = peer.recv().await;
            let Msg::FsRequest(r) = &f.msg else { panic!() };
            assert!(matches!(r.op, FsOp::List { skip: s, depth: 2, .. } if s == skip));
            let entries = vec![FsEntry::default()];
            peer.send(f.stream, Msg::FsReply(FsReply::Entries { entries, more }))
                .await;
        }
        let f = peer.recv().await;
        let message = "stat /x: No such file or directory".to_string();
        peer.send(
            f.stream,
            Msg::FsError {
                kind: FsErrorKind::NotFound,
                message,
            },
        )
        .await;
        peer
    };
    let host_side = async {
        let mut r = FileReader::new("user", "/f");
        let mut got = Vec::new();
        while let Some(chunk) = r.next(&s).await {
            got.extend(chunk.unwrap());
        }
        assert_eq!(got.len(), MAX_CHUNK + 5);
        let e = s
            .write_file("", "/w", &vec![0; MAX_CHUNK + 1])
            .await
            .unwrap();
        assert_eq!(e.path, "/w");
        assert_eq!(s.list_dir("", "/", 2).await.unwrap().len(), 2);
        let err = s
            .fs("", FsOp::Stat { path: "/x".into() })
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                FsError::Agent {
                    kind: FsErrorKind::NotFound,
                    ..
                }
            ),
            "{err:?}"
        );
    };
    let (_, _peer) = tokio::join!(host_side, agent);
}
