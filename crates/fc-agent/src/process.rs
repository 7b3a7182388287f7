//! Process streams: one per `Start`, whatever its [`Target`].
//!
//! 1. [`start`] checks the command (user, executable) inside the right root, so the host gets
//!    podman's error kinds before anything runs; then it wires stdio (pipes, or a pty whose
//!    slave is all three), spawns (`crun run`, `crun exec --process`, or the command itself)
//!    and sends `Started{pid, spawn_us}`;
//! 2. its output and stdin threads live in [`crate::pump`].
//!
//! Every frame goes through [`Stream::send`], which a new epoch can [`Stream::cancel`]: once
//! cancelled, nothing more of the stream reaches the host.

use crate::channel::Outbox;
use crate::container::{BUNDLE, CRUN, ID, ROOTFS};
use crate::oci::{self, ProcConfig};
use crate::pathres::{find_executable, path_of, Lookup, DEFAULT_PATH};
use crate::pump::{pump, stdin_loop, StdinMsg};
use crate::reaper::{self, cstrings, Cmd};
use fcvm_proto::{ErrorKind, Frame, Msg, ProcessSpec, Target};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

pub const CONTAINER_PIDFILE: &str = "/run/fcvm/container.pid";

/// A running process stream.
pub struct Stream {
    pub id: u32,
    pub target: Target,
    /// The spawned process (crun for container targets).
    pub pid: i32,
    /// Where crun writes the pid of the process inside the container.
    pub(crate) pidfile: Option<PathBuf>,
    pub(crate) out: Outbox,
    alive: Mutex<bool>,
    pub(crate) finished: AtomicBool,
    pub(crate) stdin: Mutex<Option<SyncSender<StdinMsg>>>,
    tty: Option<OwnedFd>,
    /// When its Start arrived.
    pub(crate) t0: Instant,
}

pub type StartError = (ErrorKind, String);

impl Stream {
    /// Sends a frame of this stream unless it was cancelled.
    pub fn send(&self, msg: Msg) {
        if let Ok(alive) = self.alive.lock() {
            if *alive {
                self.out.send(Frame {
                    stream: self.id,
                    msg,
                });
            }
        }
    }

    /// Stops every further frame of this stream (a new epoch took over).
    pub fn cancel(&self) {
        if let Ok(mut alive) = self.alive.lock() {
            *alive = false;
        }
    }

    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Queues stdin; false if the stream takes no stdin or the host overran its credit.
    pub fn stdin(&self, msg: StdinMsg) -> bool {
        let guard = self.stdin.lock().ok();
        match guard.as_ref().and_then(|g| g.as_ref()) {
            Some(tx) => tx.try_send(msg).is_ok(),
            None => false,
        }
    }

    /// The pid signals go to: the process inside the container if crun reported it.
    fn inner_pid(&self) -> i32 {
        self.pidfile
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|p: &i32| *p > 1)
            .unwrap_or(self.pid)
    }

    pub fn signal(&self, sig: i32) -> Result<(), String> {
        let pid = self.inner_pid();
        // SAFETY: kill(2) with a pid we spawned (or crun reported) and a caller's signal number.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(format!(
                "kill {pid} {sig}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// SIGKILL: the process group for VM processes, the container-side process otherwise;
    /// for exec and VM streams also every process left in their sessions (the `sleep` of a
    /// killed `sh -c '...; sleep 1000'` must not outlive its stream).
    pub fn kill(&self) {
        let inner = self.inner_pid();
        let sessions = match self.target {
            Target::Container => vec![],
            _ => vec![session_of(inner), Some(self.pid)],
        };
        // SAFETY: kill(2) on pids we spawned; errors (already gone) are irrelevant.
        unsafe {
            libc::kill(inner, libc::SIGKILL);
            if self.target == Target::Vm {
                libc::kill(-self.pid, libc::SIGKILL);
            } else if self.target == Target::ContainerExec || inner == self.pid {
                libc::kill(self.pid, libc::SIGKILL);
            }
        }
        for sid in sessions.into_iter().flatten() {
            kill_session(sid);
        }
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        if let Some(m) = &self.tty {
            set_winsize(m.as_raw_fd(), rows, cols);
            // crun's own pty (see `start`) does not follow ours: size it too.
            if let Some(f) = self.crun_pty() {
                set_winsize(f.as_raw_fd(), rows, cols);
            }
        }
    }

    /// The pty crun made for a TTY container or container exec, through the process's stdin
    /// (that pty's slave): None until its stdin is a devpts of the container's own, not the
    /// VM's (ours), and never for VM processes.
    fn crun_pty(&self) -> Option<std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let inner = self.inner_pid();
        if self.target == Target::Vm || inner == self.pid {
            return None;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOCTTY) // never our controlling terminal
            .open(format!("/proc/{inner}/fd/0"))
            .ok()?;
        let vm_pts = std::fs::metadata("/dev/pts").map(|m| m.dev()).ok()?;
        (f.metadata().ok()?.dev() != vm_pts).then_some(f)
    }
}

/// Spawns `cmd` (crun, or the command itself for `--vm`), errors in podman's words.
fn spawn(
    cmd: &Cmd,
    target: Target,
    name: &str,
) -> Result<(i32, std::sync::mpsc::Receiver<i32>), StartError> {
    reaper::spawn(cmd).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => {
            lookup_error(target, name, &Lookup::NotFound).unwrap_or_else(|| failed(""))
        }
        Some(libc::EACCES) | Some(libc::ENOEXEC) => {
            lookup_error(target, name, &Lookup::NotExecutable).unwrap_or_else(|| failed(""))
        }
        _ => failed(format!("spawn {name}: {e}")),
    })
}

/// crun's `run` does not give the pty it makes for a TTY container our terminal's size: set it
/// once the container's stdin is that pty, before `Started`. Should the process have looked
/// already, the resize's SIGWINCH tells it.
fn size_container_pty(s: &Stream, rows: u16, cols: u16) {
    let deadline = Instant::now() + std::time::Duration::from_secs(2);
    while !s.finished() && Instant::now() < deadline {
        if let Some(f) = s.crun_pty() {
            set_winsize(f.as_raw_fd(), rows, cols);
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// Waits until `crun run` has created the container (its state and pid file exist): an exec
/// that arrives right after the container's Start would otherwise fail in `crun exec`. The
/// bound is short: this runs on the session thread, and a container that ended never comes.
fn wait_container_created() -> Result<(), StartError> {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
    let state = Path::new("/run/crun").join(ID).join("status");
    let deadline = Instant::now() + LIMIT;
    while !(state.exists() && Path::new(CONTAINER_PIDFILE).exists()) {
        if Instant::now() > deadline {
            return Err(failed(format!(
                "the container is not running (after {LIMIT:?})"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    Ok(())
}

/// The session id of `pid` (field 6 of /proc/PID/stat).
fn session_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

/// SIGKILLs every process of session `sid` (never the agent's own session).
fn kill_session(sid: i32) {
    // SAFETY: getsid(0) only queries our own session.
    if sid <= 1 || sid == unsafe { libc::getsid(0) } {
        return;
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid > 1 && session_of(pid) == Some(sid) {
            // SAFETY: kill(2) on a process of a session we created; it may be gone already.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn set_winsize(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a valid winsize.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

fn failed(msg: impl Into<String>) -> StartError {
    (ErrorKind::Failed, msg.into())
}

fn os<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> StartError {
    move |e| failed(format!("{what}: {e}"))
}

/// A spawned process's stdio: the child's ends (closed once it runs) and ours.
struct Stdio {
    child: [OwnedFd; 3],
    /// Output fds and whether each is stderr.
    outputs: Vec<(OwnedFd, bool)>,
    stdin: Option<OwnedFd>,
    /// The pty master, for resizes.
    tty: Option<OwnedFd>,
}

impl Stdio {
    /// Pipes (stdin: /dev/null unless `stdin`), or the pty's slave as all three.
    fn new(pty: Option<nix::pty::OpenptyResult>, stdin: bool) -> Result<Stdio, StartError> {
        if let Some(pty) = pty {
            return Ok(Stdio {
                child: [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave],
                stdin: if stdin { Some(dup(&pty.master)?) } else { None },
                tty: Some(dup(&pty.master)?),
                outputs: vec![(pty.master, false)],
            });
        }
        let (or, ow) = pipe()?;
        let (er, ew) = pipe()?;
        let (inr, inw) = if stdin {
            let (r, w) = pipe()?;
            (r, Some(w))
        } else {
            let null = reaper::dev_null().map_err(os("open /dev/null"))?;
            (OwnedFd::from(null), None)
        };
        Ok(Stdio {
            child: [inr, ow, ew],
            outputs: vec![(or, false), (er, true)],
            stdin: inw,
            tty: None,
        })
    }

    fn child_raw(&self) -> [RawFd; 3] {
        self.child.each_ref().map(|f| f.as_raw_fd())
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), StartError> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(os("pipe"))
}

fn cloexec(fd: &OwnedFd) {
    // SAFETY: setting FD_CLOEXEC on an fd we own.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, StartError> {
    fd.try_clone().map_err(os("dup"))
}

/// The environment a process gets: the host's entries plus PATH, HOME (and TERM on a tty).
pub fn full_env(spec: &ProcessSpec, home: &str) -> Vec<String> {
    let mut env = spec.env.clone();
    let has = |env: &[String], k: &str| env.iter().any(|e| e.split('=').next() == Some(k));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        env.push(format!("HOME={home}"));
    }
    if spec.tty && !has(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    env
}

/// Error for a command that is missing or not executable, in podman's words.
pub fn lookup_error(target: Target, name: &str, l: &Lookup) -> Option<StartError> {
    let vm = target == Target::Vm;
    match l {
        Lookup::Found { .. } => None,
        Lookup::NotFound if vm => Some((
            ErrorKind::NotFound,
            format!("executable file `{name}` not found in $PATH"),
        )),
        Lookup::NotFound => {
            let where_ = if name.contains('/') { "" } else { " in $PATH" };
            Some((
                ErrorKind::NotFound,
                format!(
                    "crun: executable file `{name}` not found{where_}: No such file or directory: \
                     OCI runtime attempted to invoke a command that was not found"
                ),
            ))
        }
        Lookup::NotExecutable if vm => Some((
            ErrorKind::NotExecutable,
            format!("{name}: permission denied"),
        )),
        Lookup::NotExecutable => Some((
            ErrorKind::NotExecutable,
            "crun: open executable: Permission denied: OCI permission denied".into(),
        )),
    }
}

/// Starts `spec` on stream `id` (see the module docs); `t0` is when Start arrived.
pub fn start(
    id: u32,
    spec: &ProcessSpec,
    target: Target,
    out: &Outbox,
    t0: Instant,
) -> Result<Arc<Stream>, StartError> {
    let name = spec
        .args
        .first()
        .ok_or_else(|| failed("no command given"))?;
    let root = Path::new(if target == Target::Vm { "/" } else { ROOTFS });
    // Before the first Start after an image-cache restore, what the agent looked up before
    // the snapshot still holds (see crate::warm::Lookups); a --vm process could change it.
    let memo = match target {
        Target::Container => crate::warm::lookups(),
        _ => {
            crate::warm::forget_lookups();
            None
        }
    };
    let ids = match &memo {
        Some(m) => m.user(&spec.user),
        None => crate::users::resolve(root, &spec.user),
    }
    .map_err(failed)?;
    let env = full_env(spec, &ids.home);
    let cwd = if spec.cwd.is_empty() {
        "/".to_string()
    } else {
        spec.cwd.clone()
    };
    let path = path_of(&env);
    let found = memo
        .and_then(|m| m.exe(name, &path, &cwd))
        .unwrap_or_else(|| find_executable(root, name, &path, &cwd));
    if let Some(err) = lookup_error(target, name, &found) {
        return Err(err);
    }
    let proc_cfg = ProcConfig {
        args: spec.args.clone(),
        env: env.clone(),
        cwd: cwd.clone(),
        uid: ids.uid,
        gid: ids.gid,
        groups: ids.groups.clone(),
    };
    let crun_env = cstrings(&[reaper::HELPER_ENV]).map_err(failed)?;
    let pty = if spec.tty {
        let pty = nix::pty::openpty(None, None).map_err(os("openpty"))?;
        cloexec(&pty.master);
        cloexec(&pty.slave);
        set_winsize(pty.master.as_raw_fd(), spec.rows.max(1), spec.cols.max(1));
        Some(pty)
    } else {
        None
    };
    if target == Target::Container && cwd != "/" {
        // The workdir need not exist in the image (crun would fail on it).
        let _ = std::fs::create_dir_all(Path::new(ROOTFS).join(cwd.trim_start_matches('/')));
    }
    // A warm container (crate::warm) takes any command but a TTY one (crun makes the
    // terminal at creation); taking it for a TTY run just lets `crun delete` below end it.
    let warm = match (target, &found) {
        (Target::Container, Lookup::Found { inside, .. }) => {
            crate::warm::take().filter(|_| !spec.tty).map(|w| {
                let init = crate::warm::InitSpec {
                    path: inside.clone(),
                    process: proc_cfg.clone(),
                    stdin: spec.stdin,
                };
                (w, init)
            })
        }
        _ => None,
    };
    let warm_started = warm.is_some();
    // What to spawn (None: the warm container's stand-in execs the command instead).
    let (exec, pidfile) = match target {
        Target::Container if warm_started => (None, Some(CONTAINER_PIDFILE.to_string())),
        Target::Container => {
            let mut cfg = oci::spec(&proc_cfg).map_err(failed)?;
            if spec.tty {
                // As podman does: crun gives the process a pty of the container's own (its
                // controlling terminal: ^C reaches the foreground job, job control works),
                // binds it at /dev/console, and relays it to ours.
                if let Some(p) = cfg.process_mut() {
                    p.set_terminal(Some(true));
                }
            }
            oci::write_json(&Path::new(BUNDLE).join("config.json"), &cfg).map_err(failed)?;
            if Path::new("/run/crun").join(ID).exists() {
                let _ = reaper::run_quiet(&[CRUN, "delete", "--force", ID]);
            }
            let _ = std::fs::remove_file(CONTAINER_PIDFILE);
            let argv = [
                CRUN,
                "run",
                "--bundle",
                BUNDLE,
                "--pid-file",
                CONTAINER_PIDFILE,
                ID,
            ];
            let argv = cstrings(&argv).map_err(failed)?;
            let exec = (argv, CRUN.to_string(), crun_env, None, None);
            (Some(exec), Some(CONTAINER_PIDFILE.to_string()))
        }
        Target::ContainerExec => {
            wait_container_created()?;
            let json = format!("/run/fcvm/exec-{id}.json");
            let pidfile = format!("/run/fcvm/exec-{id}.pid");
            let mut p = oci::process(&proc_cfg).map_err(failed)?;
            if spec.tty {
                // crun then gives the process a pty of the container's own devpts as its
                // controlling terminal (^C, job control) and relays it to our pty; without it
                // the process runs in a new session with no terminal at all.
                p.set_terminal(Some(true));
            }
            oci::write_json(Path::new(&json), &p).map_err(failed)?;
            let _ = std::fs::remove_file(&pidfile);
            let argv = [CRUN, "exec", "--process", &json, "--pid-file", &pidfile, ID];
            let argv = cstrings(&argv).map_err(failed)?;
            (
                Some((argv, CRUN.to_string(), crun_env, None, None)),
                Some(pidfile),
            )
        }
        Target::Vm => {
            let Lookup::Found { host, .. } = &found else {
                return Err(failed("lookup"));
            };
            let argv = cstrings(&spec.args).map_err(failed)?;
            let envp = cstrings(&env).map_err(failed)?;
            let cwd_c = cstrings(&[cwd.as_str()]).map_err(failed)?.pop();
            let ids = Some((ids.uid, ids.gid, ids.groups.clone()));
            let exec = (argv, host.to_string_lossy().into_owned(), envp, cwd_c, ids);
            (Some(exec), None)
        }
    };
    let (pid, status_rx, outputs, stdin_fd, tty) = match (warm, exec) {
        (Some((w, init)), _) => {
            let s = w.start(&init).map_err(|(kind, msg)| {
                let l = match kind {
                    ErrorKind::NotFound => Lookup::NotFound,
                    ErrorKind::NotExecutable => Lookup::NotExecutable,
                    _ => return failed(format!("start {name}: {msg}")),
                };
                lookup_error(target, name, &l).unwrap_or_else(|| failed(msg))
            })?;
            let outputs = vec![(s.stdout, false), (s.stderr, true)];
            (s.pid, s.status, outputs, s.stdin, None)
        }
        (None, Some((argv, path, envp, cwd, ids))) => {
            let io = Stdio::new(pty, spec.stdin)?;
            let cmd = Cmd {
                path: std::ffi::CString::new(path).map_err(os("path"))?,
                argv,
                envp,
                cwd,
                ids,
                stdio: io.child_raw(),
                extra: vec![],
                ctty: spec.tty,
                // crun (every target but the VM's own processes), see Cmd::fixed_layout.
                fixed_layout: target != Target::Vm,
            };
            let (pid, status) = spawn(&cmd, target, name)?;
            (pid, status, io.outputs, io.stdin, io.tty)
        }
        (None, None) => return Err(failed("nothing to start")),
    };
    let spawn_us = t0.elapsed().as_micros() as u64;
    let (stdin_tx, stdin_rx) = sync_channel(64);
    let stream = Arc::new(Stream {
        id,
        target,
        pid,
        pidfile: pidfile.map(PathBuf::from),
        out: out.clone(),
        alive: Mutex::new(true),
        finished: AtomicBool::new(false),
        stdin: Mutex::new(stdin_fd.as_ref().map(|_| stdin_tx)),
        tty,
        t0,
    });
    if target == Target::Container && !warm_started {
        // "Started" for the container means crun has created it (its pid file exists): only
        // then can `crun exec` join it. The host opens execs and health checks on this
        // signal, never on a guess (DESIGN §4).
        let s = stream.clone();
        let size = spec.tty.then_some((spec.rows.max(1), spec.cols.max(1)));
        let _ = crate::pool::run(Box::new(move || {
            let pidfile = s.pidfile.clone().unwrap_or_default();
            while !s.finished() && !pidfile.exists() {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            if let Some((rows, cols)) = size {
                size_container_pty(&s, rows, cols);
            }
            if !s.finished() {
                let spawn_us = t0.elapsed().as_micros() as u64;
                s.send(Msg::Started {
                    pid: pid as u32,
                    spawn_us,
                });
            }
        }));
    } else {
        stream.send(Msg::Started {
            pid: pid as u32,
            spawn_us,
        });
    }
    // The pump first: after a restore it takes the thread started before the snapshot.
    let s = stream.clone();
    crate::pool::run(Box::new(move || pump(&s, outputs, status_rx))).map_err(os("thread"))?;
    if let Some(fd) = stdin_fd {
        let s = stream.clone();
        let is_tty = spec.tty;
        let _ = crate::pool::run(Box::new(move || stdin_loop(&s, fd, stdin_rx, is_tty)));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_defaults() {
        let spec = ProcessSpec {
            env: vec!["A=1".into(), "HOME=/x".into()],
            tty: true,
            ..Default::default()
        };
        let env = full_env(&spec, "/root");
        assert_eq!(
            env,
            [
                "A=1",
                "HOME=/x",
                &format!("PATH={DEFAULT_PATH}"),
                "TERM=xterm"
            ]
        );
    }

    #[test]
    fn error_texts() {
        let (k, m) = lookup_error(Target::Container, "nope", &Lookup::NotFound).unwrap();
        assert_eq!(k, ErrorKind::NotFound);
        assert_eq!(
            m,
            "crun: executable file `nope` not found in $PATH: No such file or directory: \
             OCI runtime attempted to invoke a command that was not found"
        );
        let (k, m) = lookup_error(Target::ContainerExec, "/etc", &Lookup::NotExecutable).unwrap();
        assert_eq!(k, ErrorKind::NotExecutable);
        assert_eq!(
            m,
            "crun: open executable: Permission denied: OCI permission denied"
        );
        let (_, m) = lookup_error(Target::Vm, "x", &Lookup::NotFound).unwrap();
        assert_eq!(m, "executable file `x` not found in $PATH");
        let (_, m) = lookup_error(Target::Vm, "x", &Lookup::NotExecutable).unwrap();
        assert_eq!(m, "x: permission denied");
    }
}
