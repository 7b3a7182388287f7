//! fc-agent: the guest agent, PID 1 of every fcvm VM (docs/design.md §6, §8).
//!
//! 1. `/init` (stage 1, [`init::stage1`]): pseudo filesystems, kernel modules, root moved to a
//!    tmpfs, then exec `/init stage2`;
//! 2. stage 2 ([`init::stage2`]): cgroup2, devpts, tmpfs mounts, loopback up, child reaper;
//! 3. the channel ([`channel`]): the `fcvm.agent` virtio-serial port, one reader and one writer
//!    thread; prints `fc-agent: ready`;
//! 4. the session ([`session`]) obeys the host until `Shutdown`.
//!
//! Run as anything but PID 1 it only prints its version: it is not meant to run on a host.

mod channel;
mod console;
mod container;
mod credit;
mod crun;
mod disks;
mod error;
mod fs;
mod fuse;
mod init;
mod log;
mod net;
mod oci;
mod pathres;
mod paths;
mod pending;
mod pods;
mod pool;
mod privileged;
mod probe;
mod process;
mod pump;
mod reaper;
mod restore;
mod session;
mod stream;
mod users;
mod warm;

use std::time::Duration;

#[allow(
    clippy::print_stdout,
    reason = "run on a host, it only says what it is"
)]
fn main() {
    if std::env::args().nth(1).as_deref() == Some(warm::INIT_ARG) {
        warm::container_init(); // the warm container's stand-in: becomes the user's process
    }
    if std::process::id() != 1 {
        println!(
            "fc-agent {} (runs as PID 1 in an fcvm VM)",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if std::env::args().nth(1).as_deref() != Some("stage2") {
        init::stage1(); // returns only if the root could not be moved
    }
    init::stage2();
    reaper::start();
    restore::arm();
    serve()
}

fn serve() -> ! {
    let (out, rx, queued) = channel::Outbox::new();
    log::set_outbox(out.clone());
    let port = loop {
        match channel::open_port(Duration::from_secs(10)) {
            Ok(p) => break p,
            Err(e) => error!("{}; still waiting", e.report()),
        }
    };
    if let Err(e) = channel::start_writer(&port, rx, queued) {
        error!("channel writer: {}", e.report());
    }
    // For people reading the console log: the host waits for the agent's hello on the
    // channel, never for console text.
    console::console_raw(&format!(
        "fc-agent: ready uptime_ms={}",
        console::uptime_ms()
    ));
    fuse::set_outbox(out.clone());
    // The session runs on a thread of its own so that map replies (docs/volumes.md) reach
    // the FUSE mounts while the session waits on one of them (crun binding a map in
    // `Prepare`): the reader hands those over itself and queues the rest in order.
    let (tx, rx) = std::sync::mpsc::sync_channel(channel::QUEUE_FRAMES);
    let mut session = session::Session::new(out);
    if let Err(e) = std::thread::Builder::new()
        .name("session".into())
        .spawn(move || rx.into_iter().for_each(|f| session.handle(f)))
    {
        error!("session thread: {e}");
    }
    channel::read_loop(port, |f| match f {
        Ok(fcvm_proto::Frame {
            msg: fcvm_proto::Msg::MapReply(r),
            ..
        }) => fuse::on_reply(r),
        f => {
            let _ = tx.send(f);
        }
    })
}
