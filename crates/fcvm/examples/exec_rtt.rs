//! In-process exec round-trip (used by `bench/exec.py`): connects to a running VM's
//! `exec.sock` once and times `Start` → `Started` and `Start` → `Exit` of `ARGV` on one
//! session, without the cost of starting an `fcvm exec` process.
//!
//! usage: exec_rtt SOCK RUNS [--vm] -- ARGV…     prints one line per run:
//!        `started_us=… spawn_us=… run_us=… exit_us=…`, then `parallel10_us=… single_us=…`
//!        (`spawn_us`: Start → exec done in the guest; `run_us`: Start → reaped in the guest).

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "figures and diagnostics"
)]

use std::time::Instant;

use fcvm::session::{Process, Session};
use fcvm_proto::{Msg, ProcessSpec, Target};

/// Runs one process to its end: (Start→Started µs, guest spawn µs, guest run µs, Start→Exit µs).
async fn one(session: &Session, target: Target, args: &[String]) -> (u128, u64, u64, u128) {
    let t0 = Instant::now();
    let spec = ProcessSpec {
        args: args.to_vec(),
        ..Default::default()
    };
    let mut p: Process = session.start(spec, target).await;
    let (mut started, mut spawn) = (0, 0);
    loop {
        match p.recv().await {
            Some(Msg::Started { spawn_us, .. }) => {
                started = t0.elapsed().as_micros();
                spawn = spawn_us;
            }
            Some(Msg::Exit { code: 0, run_us }) => {
                return (started, spawn, run_us, t0.elapsed().as_micros())
            }
            Some(Msg::Stdout(_) | Msg::Stderr(_) | Msg::Credit(_)) => {}
            other => panic!("{args:?}: unexpected {other:?}"),
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: exec_rtt SOCK RUNS [--vm] -- ARGV...";
    let (sock, runs) = match (a.first(), a.get(1).and_then(|r| r.parse::<usize>().ok())) {
        (Some(s), Some(r)) => (s.clone(), r),
        _ => panic!("{usage}"),
    };
    let target = if a.iter().any(|x| x == "--vm") {
        Target::Vm
    } else {
        Target::ContainerExec
    };
    let dash = a.iter().position(|x| x == "--").expect(usage);
    let argv = &a[dash + 1..];
    let conn = tokio::net::UnixStream::connect(&sock)
        .await
        .expect("connect exec.sock");
    let session = Session::client(conn);
    one(&session, target.clone(), argv).await; // warm-up
    for _ in 0..runs {
        let (started, spawn, run, exit) = one(&session, target.clone(), argv).await;
        println!("started_us={started} spawn_us={spawn} run_us={run} exit_us={exit}");
    }
    let t = Instant::now();
    one(&session, target.clone(), argv).await;
    let single = t.elapsed().as_micros();
    let t = Instant::now();
    let all = (0..10).map(|_| one(&session, target.clone(), argv));
    futures_join(all).await;
    println!(
        "parallel10_us={} single_us={single}",
        t.elapsed().as_micros()
    );
}

/// Awaits every future concurrently (no `futures` dependency: spawn on a LocalSet would
/// need 'static; joining by polling them in one task is enough here).
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) {
    let mut fs: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    let mut done = vec![false; fs.len()];
    std::future::poll_fn(|cx| {
        for (f, d) in fs.iter_mut().zip(done.iter_mut()) {
            if !*d && f.as_mut().poll(cx).is_ready() {
                *d = true;
            }
        }
        if done.iter().all(|d| *d) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}
