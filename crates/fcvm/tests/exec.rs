//! `fcvm exec` end to end, against ONE long-running VM shared by every check in this file.
//!
//! Plan: boot `builtin:busybox -- sleep 100000` once, then run the checks in order (one #[test],
//! each check a function, so the VM is booted once and the end state can be asserted):
//! 1. exit codes 0/1/42/127/126, in the container and with `--vm` (checks 1-6 run `--vm`
//!    commands on the container's busybox, PATH=/run/fcvm/rootfs/bin, to compare like with
//!    like; the VM's own tools are checked apart, as the README uses them);
//! 2. stdout and stderr stay apart;
//! 3. 1 MiB of binary output byte-exact, generated in the guest and piped in from the host;
//!    stdin with EOF (`-i cat`, `-i wc -c`);
//! 4. a TTY session through a pty: echo, resize (TIOCSWINSZ + SIGWINCH → `stty size`), Ctrl-C
//!    stops a guest `sleep` and the shell lives on, `exit N` ends with N, termios restored;
//!    in the container `top` draws and quits on `q`, `vi` edits and writes a file;
//! 5. 50 concurrent execs, each printing its own index;
//! 6. a SIGKILLed client ends its guest process (and what it started);
//! 7. garbage and oversize frames on the exec socket leave the session working;
//! 8. the VM's own root has a shell and tools (busybox in the initramfs): `--vm -- cat
//!    /proc/cpuinfo` and `--vm -- sh -c 'ls / | head -1'` work with the default PATH;
//! 9. a missing VM, an exec whose VM dies under it, and a dead VM: 125 with one clear line.
//!
//! Then the VM is removed and nothing of it may be left (record, directory, QEMU). A guard
//! kills the VM if a check panics.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const LIMIT: Duration = Duration::from_secs(120);
/// `--vm` commands on the container's busybox (the VM's own is [`vm_has_its_own_tools`]).
const VM: &[&str] = &["--vm", "-e", "PATH=/run/fcvm/rootfs/bin"];

/// The VM under test; dropping it (a failed check) kills its owner and removes it.
use common::OwnedVm as Fixture;

impl Fixture {
    fn boot() -> Fixture {
        let name = name("exec");
        let mut owner = fcvm()
            .args(["podman", "run", "--name", &name, "builtin:busybox"])
            .args(["--", "sleep", "100000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fcvm podman run");
        let id = wait_running(&mut owner, &name)["id"]
            .as_str()
            .expect("id")
            .to_string();
        Fixture {
            name,
            id,
            owner: Some(owner),
        }
    }

    fn cmd(&self, args: &[&str]) -> std::process::Command {
        let mut c = fcvm();
        c.args(["exec", "--name", &self.name]).args(args);
        c
    }

    /// `fcvm exec --name VM ARGS…` (ARGS hold the flags, `--` and the command).
    fn exec(&self, args: &[&str]) -> Output {
        self.exec_in(args, None)
    }

    /// Same, with `input` piped to fcvm's stdin (pass `-i` to forward it).
    fn exec_in(&self, args: &[&str], input: Option<Vec<u8>>) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fcvm exec");
        if let Some(bytes) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        drain(child, LIMIT, args)
    }

    /// Runs `script` with sh in the container (or the VM with `VM`), expecting exit 0.
    fn sh(&self, flags: &[&str], script: &str) -> String {
        let mut args = flags.to_vec();
        args.extend(["--", "sh", "-c", script]);
        let out = self.exec(&args);
        assert_eq!(code(&out), 0, "{script}: {}", text(&out.stderr));
        text(&out.stdout)
    }
}

/// Waits for `child` while reading its stdout and stderr (common's `wait_output` reads only
/// at the end, and 1 MiB does not fit in a pipe); kills it and fails after `limit`.
fn drain(mut child: Child, limit: Duration, what: &[&str]) -> Output {
    fn reader<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = vec![];
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    }
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let err = err.join().unwrap_or_default();
            panic!(
                "fcvm exec {what:?} did not finish within {limit:?}: {}",
                text(&err)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// `flags` followed by `--` and `cmd`.
fn argv<'a>(flags: &[&'a str], cmd: &[&'a str]) -> Vec<&'a str> {
    let mut a = flags.to_vec();
    a.push("--");
    a.extend_from_slice(cmd);
    a
}

#[test]
fn exec_end_to_end() {
    let mut vm = Fixture::boot();
    for target in [&[][..], VM] {
        exit_codes(&vm, target);
        stdout_and_stderr_apart(&vm, target);
        binary_output_and_stdin(&vm, target);
        tty_session(&vm, target);
        killed_client_ends_the_guest_process(&vm, target);
    }
    fifty_concurrent_execs(&vm);
    bad_frames_leave_the_session_working(&vm);
    vm_has_its_own_tools(&vm);
    podmans_spelling(&vm);
    missing_and_dead_vms(&mut vm);
}

/// What a podman user types: `podman exec [FLAGS] CONTAINER CMD…` and `podman ps`.
fn podmans_spelling(vm: &Fixture) {
    let out = run(
        &[
            "podman",
            "exec",
            "-e",
            "K=v",
            &vm.name,
            "sh",
            "-c",
            "echo $K-$((6*7)); exit 3",
        ],
        LIMIT,
    );
    assert_eq!(code(&out), 3, "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "v-42\n");
    let out = run(&["podman", "exec", "no-such-vm", "true"], LIMIT);
    assert_eq!(code(&out), 125, "{}", text(&out.stderr));
    let out = run(&["podman", "ps", "-a", "--format", "json"], LIMIT);
    let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("json");
    assert!(all.iter().any(|v| v["name"] == vm.name.as_str()), "{all:?}");
    let out = run(&["podman", "ps"], LIMIT);
    assert!(
        text(&out.stdout).contains(&vm.name),
        "{}",
        text(&out.stdout)
    );
    // podman rm's exit codes: 1 for no such container, 2 for a running one without -f
    // (which goes on running).
    assert_eq!(code(&run(&["podman", "rm", "no-such-vm"], LIMIT)), 1);
    assert_eq!(code(&run(&["podman", "rm", &vm.name], LIMIT)), 2);
    assert_eq!(vm.sh(&[], "echo still"), "still\n");
}

/// The README's `fcvm exec --name web --vm -- cat /proc/cpuinfo`, as written: no PATH given,
/// the VM's root (not the container's) has a shell and the usual tools.
fn vm_has_its_own_tools(vm: &Fixture) {
    let out = vm.exec(&["--vm", "--", "cat", "/proc/cpuinfo"]);
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("processor"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(vm.sh(&["--vm"], "ls / | head -1"), "bin\n");
    // The VM's root it is: the agent is its /init, and the container's root is mounted in it.
    assert_eq!(
        vm.sh(
            &["--vm"],
            "test -x /init && test -d /run/fcvm/rootfs/bin && echo vm"
        ),
        "vm\n"
    );
}

fn exit_codes(vm: &Fixture, t: &[&str]) {
    let passwd = if t.is_empty() {
        "/etc/passwd"
    } else {
        "/run/fcvm/rootfs/etc/passwd"
    };
    let cases: &[(&[&str], i32)] = &[
        (&["sh", "-c", "exit 0"], 0),
        (&["false"], 1),
        (&["sh", "-c", "exit 42"], 42),
        (&["no-such-cmd"], 127),
        (&[passwd], 126),
    ];
    for (cmd, want) in cases {
        let out = vm.exec(&argv(t, cmd));
        let err = text(&out.stderr);
        assert_eq!(code(&out), *want, "{t:?} {cmd:?}: {err}");
        if *want >= 126 {
            assert_eq!(err.trim().lines().count(), 1, "{cmd:?}: one line: {err}");
            assert!(
                err.contains(cmd[0]) || err.contains("ermission denied"),
                "{err}"
            );
        }
    }
}

fn stdout_and_stderr_apart(vm: &Fixture, t: &[&str]) {
    let out = vm.exec(&argv(t, &["sh", "-c", "echo out; echo err >&2; echo out2"]));
    assert_eq!(code(&out), 0);
    assert_eq!(text(&out.stdout), "out\nout2\n", "{t:?}");
    assert_eq!(text(&out.stderr), "err\n", "{t:?}");
    // crun runs with a fixed layout (faster under TCG); what it execs keeps its ASLR.
    assert_eq!(
        vm.sh(t, "cat /proc/self/personality"),
        "00000000\n",
        "{t:?}"
    );
}

/// Deterministic bytes covering every value (xorshift), so a dropped or mangled byte shows.
fn pattern(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

fn binary_output_and_stdin(vm: &Fixture, t: &[&str]) {
    const MIB: usize = 1 << 20;
    // Generated in the guest: its checksum (computed there) must match the bytes we got.
    let sum = vm.sh(
        t,
        "dd if=/dev/urandom of=/tmp/blob bs=1024 count=1024 2>/dev/null; sha256sum /tmp/blob",
    );
    let out = vm.exec(&argv(t, &["cat", "/tmp/blob"]));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert_eq!(out.stdout.len(), MIB, "{t:?}");
    assert_eq!(
        sum.split_whitespace().next(),
        Some(sha256(&out.stdout).as_str())
    );
    // From the host, through stdin and back: byte-exact, EOF delivered.
    let data = pattern(MIB);
    let mut flags = vec!["-i"];
    flags.extend_from_slice(t);
    let out = vm.exec_in(&argv(&flags, &["cat"]), Some(data.clone()));
    assert_eq!(code(&out), 0, "{}", text(&out.stderr));
    assert!(out.stdout == data, "{t:?}: 1 MiB through cat differs");
    let out = vm.exec_in(&argv(&flags, &["wc", "-c"]), Some(data));
    assert_eq!(text(&out.stdout).trim(), MIB.to_string());
    let out = vm.exec_in(&argv(&flags, &["wc", "-c"]), Some(vec![]));
    assert_eq!(
        text(&out.stdout).trim(),
        "0",
        "empty stdin is an EOF at once"
    );
    // Without -i the process reads /dev/null.
    let out = vm.exec_in(&argv(t, &["wc", "-c"]), Some(b"ignored".to_vec()));
    assert_eq!(text(&out.stdout).trim(), "0");
}

/// The master side of a pty that fcvm's stdin/stdout/stderr are the slave of.
struct Pty {
    master: std::fs::File,
    seen: Vec<u8>,
}

impl Pty {
    /// Reads until `needle` shows up after everything consumed so far; returns what came.
    fn expect(&mut self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(i) = find(&self.seen, needle.as_bytes()) {
                let got: Vec<u8> = self.seen.drain(..i + needle.len()).collect();
                return text(&got);
            }
            assert!(
                start.elapsed() < limit,
                "no {needle:?} on the terminal within {limit:?}; got {:?}",
                text(&self.seen)
            );
            let mut p = libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one valid pollfd.
            if unsafe { libc::poll(&mut p, 1, 100) } > 0 {
                let mut buf = [0u8; 4096];
                match self.master.read(&mut buf) {
                    Ok(n) if n > 0 => self.seen.extend_from_slice(&buf[..n]),
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    fn send(&mut self, s: &str) {
        self.master.write_all(s.as_bytes()).expect("write to pty");
    }

    /// Types `line` and Enter, then waits for `want` (output, not the echo, if it differs).
    fn line(&mut self, line: &str, want: &str, limit: Duration) -> String {
        self.send(&format!("{line}\r"));
        self.expect(want, limit)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn set_size(fd: &impl AsRawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0);
}

fn tty_session(vm: &Fixture, t: &[&str]) {
    let mut flags = vec!["-it"];
    flags.extend_from_slice(t);
    drive_tty(
        vm.cmd(&argv(&flags, &["sh"])),
        t.is_empty(),
        &format!("{t:?}"),
    );
}

/// `fcvm podman run -it IMAGE sh`: the same terminal session as `exec -it`, as the container.
#[test]
fn podman_run_it_is_an_interactive_container() {
    let n = name("runit");
    let mut cmd = fcvm();
    cmd.args([
        "podman",
        "run",
        "--name",
        &n,
        "-it",
        "builtin:busybox",
        "sh",
    ]);
    drive_tty(cmd, true, "podman run -it");
    assert_gone(&n, None);
}

/// Drives `sh` in `cmd` through a pty: echo, resize, Ctrl-C, (in a container) top and vi,
/// `exit 3`; the terminal's settings must come back unchanged.
fn drive_tty(mut cmd: std::process::Command, container: bool, t: &str) {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    set_size(&pty.slave, 30, 100);
    let before = nix::sys::termios::tcgetattr(&pty.slave).expect("tcgetattr");
    let slave = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
    let child = cmd
        .stdin(slave(&pty.slave))
        .stdout(slave(&pty.slave))
        .stderr(slave(&pty.slave))
        .spawn()
        .expect("spawn fcvm exec -it");
    let pid = Pid::from_raw(child.id() as i32);
    let mut term = Pty {
        master: std::fs::File::from(pty.master),
        seen: vec![],
    };
    let wait = Duration::from_secs(30);
    term.expect("# ", wait);
    // Typed input is echoed by the guest's terminal; the output follows.
    term.send("echo hel''lo-$((6*7))\r");
    term.expect("echo hel''lo-$((6*7))", wait);
    term.expect("hello-42", wait);
    term.line("stty size", "30 100", wait);
    // Resize: the terminal changes, fcvm gets SIGWINCH and tells the guest.
    set_size(&term.master, 40, 120);
    kill(pid, Signal::SIGWINCH).expect("SIGWINCH");
    // The resize travels beside the typed input, not in it: ask until the guest has it (each
    // answer is read up to the prompt that follows it).
    let t0 = Instant::now();
    while !term.line("stty size", "# ", wait).contains("40 120") {
        assert!(t0.elapsed() < wait, "{t}: the guest never saw the resize");
    }
    // Ctrl-C stops the foreground sleep; the shell answers again at once. The child says when
    // it runs (it is the terminal's foreground by then): a Ctrl-C before would reach the shell.
    term.line("sh -c 'echo fg-$((6*7)); exec sleep 1000'", "fg-42", wait);
    // Without it the shell would wait 1000 s, far beyond `wait`.
    term.send("\x03");
    term.line("echo alive-$((6*7))", "alive-42", wait);
    if container {
        // Full-screen programs: top draws and quits on `q`; vi edits and writes a file.
        term.line("top", "Mem:", wait);
        term.send("q");
        term.line("echo top-done-$((1+1))", "top-done-2", wait);
        term.line("vi /tmp/vi.txt", "vi /tmp/vi.txt", wait);
        term.expect("~", wait);
        term.send("ihello from vi");
        term.expect("hello from vi", wait);
        // A lone ESC: vi waits a moment to tell it from the start of an escape sequence.
        term.send("\x1b");
        std::thread::sleep(Duration::from_millis(700));
        term.send(":wq\r");
        term.line("echo vi-exit-$((3+3))", "vi-exit-6", wait);
        term.line("cat /tmp/vi.txt", "hello from vi", wait);
    }
    term.send("exit 3\r");
    let out = drain(child, wait, &["-it"]);
    assert_eq!(code(&out), 3, "{t}: exit code of the tty session");
    let after = nix::sys::termios::tcgetattr(&pty.slave).expect("tcgetattr");
    assert!(before == after, "{t}: terminal settings not restored");
}

fn killed_client_ends_the_guest_process(vm: &Fixture, t: &[&str]) {
    // `; echo never` keeps sh the parent (no exec of the last command): both must go.
    let script = "echo $$ > /tmp/victim; echo started; sleep 1000; echo never";
    let mut client = vm
        .cmd(&argv(t, &["sh", "-c", script]))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fcvm exec");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(client.stdout.as_mut().expect("stdout")),
        &mut line,
    )
    .expect("read");
    assert_eq!(line, "started\n");
    client.kill().expect("SIGKILL the client");
    client.wait().expect("wait");
    let check = "p=$(cat /tmp/victim); if kill -0 $p 2>/dev/null; then echo alive; \
                 elif ps -o args | grep -q '^sleep 1000$'; then echo orphan; else echo gone; fi";
    // Each look is an exec of its own, seconds apiece on a loaded host: a limit of 60 s.
    let mut last = String::new();
    let t0 = Instant::now();
    while last != "gone" {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{t:?}: the guest process of a killed client is still {last:?}"
        );
        last = vm.sh(t, check).trim().to_string();
    }
}

fn fifty_concurrent_execs(vm: &Fixture) {
    let children: Vec<(usize, Child)> = (0..50)
        .map(|i| {
            let c = vm
                .cmd(&["--", "echo", &format!("exec-{i}")])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn fcvm exec");
            (i, c)
        })
        .collect();
    let start = Instant::now();
    for (i, c) in children {
        let left = LIMIT
            .saturating_sub(start.elapsed())
            .max(Duration::from_secs(1));
        let out = drain(c, left, &["concurrent"]);
        assert_eq!(code(&out), 0, "exec {i}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), format!("exec-{i}\n"));
    }
}

fn bad_frames_leave_the_session_working(vm: &Fixture) {
    use fcvm_proto::codec::{encode, Decoder, MAX_ENCODED};
    use fcvm_proto::{Frame, Msg, ProcessSpec, Target};
    let sock = data_dir().join("vms").join(&vm.id).join("exec.sock");
    let mut conn = std::os::unix::net::UnixStream::connect(&sock).expect("connect exec.sock");
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let start = |stream, cmd: &str| {
        encode(&Frame {
            stream,
            msg: Msg::Start {
                spec: ProcessSpec {
                    args: vec!["sh".into(), "-c".into(), cmd.into()],
                    ..Default::default()
                },
                target: Target::ContainerExec,
            },
        })
        .expect("encode")
    };
    let mut bytes = vec![0];
    bytes.extend_from_slice(b"\x01garbage\xff\xfe\x00"); // not a frame
    bytes.extend_from_slice(&start(7, "echo seven")[3..]); // a torn frame
    bytes.extend(std::iter::repeat_n(0x55, MAX_ENCODED + 100)); // oversize
    bytes.push(0);
    bytes.extend(start(8, "echo eight"));
    bytes.extend(
        encode(&Frame {
            stream: 99,
            msg: Msg::Stdin(b"x".to_vec()),
        })
        .expect("enc"),
    );
    conn.write_all(&bytes).expect("write");
    let mut dec = Decoder::new();
    let mut buf = [0u8; 4096];
    let mut out = String::new();
    let code = loop {
        let n = conn.read(&mut buf).expect("read from exec.sock");
        assert!(n > 0, "exec server closed the connection");
        dec.feed(&buf[..n]);
        let mut done = None;
        while let Some(f) = dec.next_frame() {
            let f = f.expect("server frames decode");
            assert_eq!(f.stream, 8, "only stream 8 was started: {f:?}");
            match f.msg {
                Msg::Stdout(d) => out.push_str(&text(&d)),
                Msg::Exit { code, .. } => done = Some(code),
                Msg::Started { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        if let Some(c) = done {
            break c;
        }
    };
    assert_eq!((code, out.as_str()), (0, "eight\n"));
    // And other clients were never disturbed.
    assert_eq!(vm.sh(&[], "echo still"), "still\n");
}

fn missing_and_dead_vms(vm: &mut Fixture) {
    let quick = Duration::from_secs(30);
    let missing = format!("no-such-vm-{}", std::process::id());
    let out = run(&["exec", "--name", &missing, "--", "true"], quick);
    let err = text(&out.stderr);
    assert_eq!(code(&out), 125, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&missing), "{err}");

    // An exec in flight when the VM's owner dies ends with 125, not a hang.
    let mut inflight = vm
        .cmd(&["--", "sh", "-c", "echo started; exec sleep 1000"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = [0u8; 8];
    inflight
        .stdout
        .as_mut()
        .expect("stdout")
        .read_exact(&mut line)
        .expect("started");
    let mut owner = vm.owner.take().expect("owner");
    owner.kill().expect("SIGKILL owner");
    owner.wait().expect("wait owner");
    let out = drain(inflight, quick, &["in flight"]);
    let err = text(&out.stderr);
    assert_eq!(code(&out), 125, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("lost"), "{err}");

    // The VM is now dead (its QEMU died with its owner): exec says so at once. (Not waited
    // for through `fcvm ls`, which would reap it.)
    let dir = data_dir().join("vms").join(&vm.id);
    wait_for("QEMU gone", quick, || {
        process_with_arg(&dir.display().to_string()).is_none()
    });
    let out = run(&["exec", "--name", &vm.name, "--", "true"], quick);
    let err = text(&out.stderr);
    assert_eq!(code(&out), 125, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("not running (it is dead)"), "{err}");

    let out = run(&["rm", &vm.name], quick);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_gone(&vm.name, Some(&vm.id));
}
