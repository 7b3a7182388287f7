//! Drives a booted fc-agent over its virtio-serial socket (QEMU `-chardev socket,server=on`):
//! the end-to-end check of the session (Hello, Prepare, container/exec/VM processes, stdin,
//! tty, errors, a host reconnect with a new epoch, Shutdown).
//!
//! usage: cargo run -p fc-agent --example drive -- /path/to/agent.sock

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "figures and diagnostics"
)]

use fcvm_proto::codec::{encode, Decoder};
use fcvm_proto::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

struct Conn {
    s: UnixStream,
    dec: Decoder,
    t0: Instant,
}

#[derive(Default, Debug)]
struct Outcome {
    started: Option<(u32, u64)>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    first_out: Option<Duration>,
    end: Option<Msg>,
    credits: u32,
}

impl Conn {
    fn connect(path: &str) -> Conn {
        let t0 = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(path) {
                return Conn {
                    s,
                    dec: Decoder::new(),
                    t0,
                };
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "no socket {path}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, stream: u32, msg: Msg) {
        self.s
            .write_all(&encode(&Frame { stream, msg }).unwrap())
            .unwrap();
    }

    fn recv(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 65536];
        loop {
            if let Some(f) = self.dec.next_frame() {
                match f {
                    Ok(Frame {
                        msg: Msg::Log { level, message },
                        ..
                    }) => {
                        println!("  [agent log {level:?}] {message}");
                        continue;
                    }
                    Ok(f) => return Some(f),
                    Err(e) => {
                        println!("  (bad frame: {e})");
                        continue;
                    }
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.s
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match self.s.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.dec.feed(&buf[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Waits for a control reply matching `want`.
    fn control(&mut self, want: fn(&Msg) -> bool) -> Msg {
        loop {
            let f = self.recv(Duration::from_secs(120)).expect("control reply");
            if f.stream == CONTROL && want(&f.msg) {
                return f.msg;
            }
            println!("  (skipping {:?} on {})", short(&f.msg), f.stream);
        }
    }

    fn start(&mut self, id: u32, target: Target, spec: ProcessSpec) -> Instant {
        let t = Instant::now();
        self.send(id, Msg::Start { spec, target });
        t
    }

    /// Collects a stream until its final frame; `until` stops early once stdout contains it.
    fn collect(&mut self, id: u32, t: Instant, until: Option<&str>) -> Outcome {
        self.collect_for(id, t, until, Duration::from_secs(120))
    }

    fn collect_for(&mut self, id: u32, t: Instant, until: Option<&str>, d: Duration) -> Outcome {
        let mut o = Outcome::default();
        while let Some(f) = self.recv(d) {
            if f.stream != id {
                println!("  (other stream {}: {:?})", f.stream, short(&f.msg));
                continue;
            }
            match f.msg {
                Msg::Started { pid, spawn_us } => o.started = Some((pid, spawn_us)),
                Msg::Stdout(b) => {
                    o.first_out.get_or_insert(t.elapsed());
                    o.stdout.extend(b);
                }
                Msg::Stderr(b) => {
                    o.first_out.get_or_insert(t.elapsed());
                    o.stderr.extend(b);
                }
                Msg::Credit(n) => o.credits += n,
                m @ (Msg::Exit { .. } | Msg::Error { .. }) => {
                    o.end = Some(m);
                    return o;
                }
                m => println!("  unexpected {m:?}"),
            }
            if let Some(u) = until {
                if String::from_utf8_lossy(&o.stdout).contains(u) {
                    return o;
                }
            }
        }
        o
    }
}

fn short(m: &Msg) -> String {
    let s = format!("{m:?}");
    s.chars().take(120).collect()
}

fn spec(args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn show(name: &str, o: &Outcome) {
    println!(
        "{name}: started={:?} first_output={:?} stdout={:?} stderr={:?} end={:?} credits={}",
        o.started,
        o.first_out,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        o.end,
        o.credits
    );
}

fn check(ok: bool, what: &str) {
    println!("{} {what}", if ok { "PASS" } else { "FAIL" });
    if !ok {
        std::process::exit(1);
    }
}

fn main() {
    let path = std::env::args().nth(1).expect("socket path");
    let mut c = Conn::connect(&path);
    if std::env::args().nth(2).as_deref() == Some("shutdown-busy") {
        // Shutdown while the container runs (and ignores SIGTERM as PID 1 of its namespace).
        c.send(
            CONTROL,
            Msg::Hello {
                epoch: 1,
                version: PROTOCOL_VERSION,
                random_seed: vec![],
            },
        );
        c.control(|m| matches!(m, Msg::HelloAck { .. }));
        c.send(
            CONTROL,
            Msg::Prepare(ContainerPlan {
                image_fstype: "erofs".into(),
                hostname: "b".into(),
                network: None,
                warm: false,
                prefetch: vec![],
                path: String::new(),
                privileged: false,
                disks: vec![],
                maps: vec![],
            }),
        );
        c.control(|m| matches!(m, Msg::Prepared));
        let t = c.start(
            1,
            Target::Container,
            spec(&["sh", "-c", "echo up; exec sleep 1000"]),
        );
        c.collect(1, t, Some("up"));
        let t = Instant::now();
        c.send(CONTROL, Msg::Shutdown);
        while let Some(f) = c.recv(Duration::from_secs(30)) {
            println!("  {:?} after {:?}", short(&f.msg), t.elapsed());
        }
        println!(
            "Shutdown (busy): host connection ended after {:?}",
            t.elapsed()
        );
        return;
    }
    // Session 1 -------------------------------------------------------------------------
    c.send(
        CONTROL,
        Msg::Hello {
            epoch: 1,
            version: PROTOCOL_VERSION,
            random_seed: vec![],
        },
    );
    let ack = c.control(|m| matches!(m, Msg::HelloAck { .. }));
    println!("HelloAck after {:?} on the host: {ack:?}", c.t0.elapsed());
    let t = Instant::now();
    c.send(
        CONTROL,
        Msg::Prepare(ContainerPlan {
            image_fstype: "erofs".into(),
            hostname: "testbox".into(),
            network: None,
            warm: false,
            prefetch: vec![],
            path: String::new(),
            privileged: false,
            disks: vec![],
            maps: vec![],
        }),
    );
    let r = c.control(|m| matches!(m, Msg::Prepared | Msg::PrepareFailed { .. }));
    println!("Prepare -> {r:?} in {:?}", t.elapsed());
    check(r == Msg::Prepared, "prepared");

    let t = c.start(
        1,
        Target::Container,
        spec(&["sh", "-c", "echo hi; echo err >&2; exit 3"]),
    );
    let o = c.collect(1, t, None);
    show("container sh", &o);
    check(
        o.stdout == b"hi\n"
            && o.stderr == b"err\n"
            && matches!(o.end, Some(Msg::Exit { code: 3, .. })),
        "container: hi / err / exit 3",
    );

    let t = c.start(2, Target::Container, spec(&["nope"]));
    let o = c.collect(2, t, None);
    show("container nope", &o);
    check(
        matches!(
            o.end,
            Some(Msg::Error {
                kind: ErrorKind::NotFound,
                ..
            })
        ),
        "not found",
    );
    let t = c.start(3, Target::Container, spec(&["/data/notexec"]));
    let o = c.collect(3, t, None);
    check(
        matches!(
            o.end,
            Some(Msg::Error {
                kind: ErrorKind::NotExecutable,
                ..
            })
        ),
        "not executable",
    );
    let t = c.start(
        4,
        Target::Container,
        ProcessSpec {
            user: "bob".into(),
            ..spec(&["id"])
        },
    );
    let o = c.collect(4, t, None);
    show("container user bob", &o);
    check(
        matches!(
            o.end,
            Some(Msg::Error {
                kind: ErrorKind::Failed,
                ..
            })
        ),
        "unknown user",
    );

    let t = c.start(5, Target::Vm, spec(&["crun", "--version"]));
    let o = c.collect(5, t, None);
    show("vm crun --version", &o);
    check(
        matches!(o.end, Some(Msg::Exit { code: 0, .. })) && o.stdout.starts_with(b"crun version"),
        "vm crun",
    );

    // A long-running container with stdin, an exec into it, a tty exec.
    let t = c.start(
        6,
        Target::Container,
        ProcessSpec {
            stdin: true,
            user: "app".into(),
            ..spec(&[
                "sh",
                "-c",
                "echo ready; id; read x; echo got $x; wc -c; sleep 2; echo after-gap; sleep 1000",
            ])
        },
    );
    let o = c.collect(6, t, Some("ready"));
    show("container long", &o);
    let t = c.start(
        7,
        Target::ContainerExec,
        spec(&["sh", "-c", "hostname; cat /etc/hosts; pwd"]),
    );
    let o = c.collect(7, t, None);
    show("exec hostname", &o);
    check(
        String::from_utf8_lossy(&o.stdout).starts_with("testbox\n")
            && matches!(o.end, Some(Msg::Exit { code: 0, .. })),
        "exec sees the hostname",
    );
    let t = c.start(
        8,
        Target::ContainerExec,
        ProcessSpec {
            tty: true,
            rows: 33,
            cols: 101,
            ..spec(&["sh", "-c", "tty; stty size"])
        },
    );
    let o = c.collect(8, t, None);
    show("exec tty", &o);
    check(
        String::from_utf8_lossy(&o.stdout).contains("33 101"),
        "tty size",
    );
    c.send(6, Msg::Stdin(b"hello\n".to_vec()));
    let big = vec![b'x'; 300 * 1024];
    for chunk in big.chunks(MAX_CHUNK) {
        c.send(6, Msg::Stdin(chunk.to_vec()));
    }
    c.send(6, Msg::StdinEof);
    let o = c.collect(6, Instant::now(), Some("307200"));
    show("container stdin", &o);
    check(
        String::from_utf8_lossy(&o.stdout).contains("got hello"),
        "stdin reached the container",
    );
    check(o.credits >= 256 * 1024, "credit granted");
    c.send(99, Msg::Signal(15));
    let f = c.recv(Duration::from_secs(10));
    println!("signal to stream 99 -> {f:?}");
    let t = c.start(9, Target::Container, spec(&["true"]));
    let o = c.collect(9, t, None);
    check(
        o.end
            == Some(Msg::Error {
                kind: ErrorKind::Failed,
                message: "container already running".into(),
            }),
        "second container refused",
    );
    // an exec left running: the next epoch must kill it
    let t = c.start(10, Target::ContainerExec, spec(&["sleep", "1001"]));
    let o = c.collect_for(10, t, Some("never"), Duration::from_secs(1));
    println!("exec sleep 1001 started: {:?}", o.started);
    c.send(
        CONTROL,
        Msg::Hello {
            epoch: 1,
            version: PROTOCOL_VERSION,
            random_seed: vec![],
        },
    );
    let ack = c.control(|m| matches!(m, Msg::HelloAck { .. }));
    println!("same epoch again -> {ack:?}");
    // garbage and a torn frame: skipped, the session lives on
    c.s.write_all(&[9, 9, 9, 0, 1, 2]).unwrap();
    drop(c);

    // Session 2: a new host connection, after a gap in which the container prints -------
    std::thread::sleep(Duration::from_millis(4000));
    let mut c = Conn::connect(&path);
    c.send(
        CONTROL,
        Msg::Hello {
            epoch: 2,
            version: PROTOCOL_VERSION,
            random_seed: vec![],
        },
    );
    let t = Instant::now();
    let ack = c.control(|m| matches!(m, Msg::HelloAck { epoch: 2, .. }));
    println!("HelloAck round trip {:?}", t.elapsed());
    println!("HelloAck (epoch 2): {ack:?}");
    check(
        matches!(
            ack,
            Msg::HelloAck {
                info: AgentInfo { prepared: true, .. },
                ..
            }
        ),
        "prepared survives",
    );
    let t = c.start(1, Target::Vm, spec(&["/usr/bin/crun", "list"]));
    let o = c.collect(1, t, None);
    show("vm crun list (epoch 2)", &o);
    check(
        matches!(o.end, Some(Msg::Exit { code: 0, .. }))
            && String::from_utf8_lossy(&o.stdout).contains("fcvm"),
        "container survives the epoch",
    );
    let t = c.start(
        2,
        Target::ContainerExec,
        spec(&["sh", "-c", "ps -o pid,args"]),
    );
    let o = c.collect(2, t, None);
    show("exec ps (epoch 2)", &o);
    check(
        !String::from_utf8_lossy(&o.stdout).contains("1001"),
        "old epoch's exec killed",
    );
    c.send(
        CONTROL,
        Msg::Restored {
            epoch: 2,
            plan: RestorePlan {
                clock_unix_ns: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64,
                random_seed: vec![7; 64],
                hostname: Some("clone1".into()),
                machine_id: Some("0123456789abcdef0123456789abcdef".into()),
                network: None,
                keep_streams: vec![],
            },
        },
    );
    let r = c.control(|m| matches!(m, Msg::RestoreComplete { .. } | Msg::RestoreFailed { .. }));
    check(r == Msg::RestoreComplete { epoch: 2 }, "restore steps");
    let t = c.start(
        3,
        Target::ContainerExec,
        spec(&["sh", "-c", "cat /etc/hostname; date +%Y"]),
    );
    let o = c.collect(3, t, None);
    show("exec after restore", &o);
    c.send(6, Msg::Signal(9));
    let o = c.collect(6, Instant::now(), None);
    show("container after SIGKILL", &o);
    check(
        matches!(o.end, Some(Msg::Exit { code: 137, .. })),
        "container killed: 137",
    );
    // timing of a fresh container start
    let t = c.start(11, Target::Container, spec(&["echo", "fast"]));
    let o = c.collect(11, t, None);
    show("container echo", &o);
    let t = c.start(
        12,
        Target::Container,
        ProcessSpec {
            tty: true,
            stdin: true,
            rows: 24,
            cols: 80,
            ..spec(&["sh", "-c", "tty; stty size; read x; stty size"])
        },
    );
    let o = c.collect(12, t, Some("24 80"));
    show("container tty", &o);
    c.send(
        12,
        Msg::Resize {
            rows: 40,
            cols: 120,
        },
    );
    c.send(12, Msg::Stdin(b"go\n".to_vec()));
    let o = c.collect(12, t, None);
    show("container tty after resize", &o);
    check(
        String::from_utf8_lossy(&o.stdout).contains("40 120"),
        "resize",
    );
    c.send(CONTROL, Msg::Shutdown);
    let t = Instant::now();
    while c.recv(Duration::from_secs(30)).is_some() {}
    println!("Shutdown: host connection ended after {:?}", t.elapsed());
}
