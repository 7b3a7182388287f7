//! The warm container: crun's expensive part done before the user's process is known.
//!
//! `crun run` spends most of a container's start (under TCG ~0.5 s) on namespaces, mounts,
//! cgroups and pivot_root — none of which depends on the command. So right after Prepare
//! the agent runs `crun run --detach` with a stand-in process: this very binary, exec'd
//! through `/proc/self/fd/5` (nothing is added to the container's files), which waits on a
//! pipe ([`container_init`]). The image-cache snapshot is taken with it waiting, so a
//! restored run only has to hand it the command:
//!
//! 1. [`create`] (after Prepare): `crun run --detach --preserve-fds 7` with fd 3 = the read
//!    end of the command pipe, fd 4 = the write end of the status pipe, fd 5 = this binary,
//!    fds 6-8 = the stand-in's ends of its future stdin, stdout and stderr pipes and fd 9 =
//!    /dev/null; the stand-in's pid is adopted from crun's pid file;
//! 2. [`Warm::start`] (on `Start{Container}`): writes [`InitSpec`] (postcard) into the command
//!    pipe and closes it; the stand-in reads to its end, puts the pipes (or /dev/null for
//!    stdin without `-i`) on 0-2, closes the rest, switches to the user (unless it already
//!    is that user), changes directory and execs. Its status pipe end is close-on-exec, so
//!    end-of-file is the explicit "exec succeeded" signal; a failed exec writes its errno
//!    instead. (Pipes rather than a socket: the output needs the pipe code right after,
//!    while a socket's would be translated for this one message after a restore.)
//!
//! The user's process is still started fresh on every run: only crun's set-up is reused.
//! Whatever else can be done before the snapshot is, because after a restore under TCG each
//! kernel path costs its translation (creating pipes, passing fds, a JSON parser:
//! milliseconds each). [`prefetch`] looks up every executable on the container's PATH and
//! reads what that process will most likely need first (its executable, ELF interpreter,
//! /etc/passwd and /etc/group) into the caches the snapshot keeps, and remembers the answers
//! ([`Lookups`]) for the first Start.
//! TTY runs (crun makes their terminal when it creates the container) use plain `crun run`.

use crate::error::{Error, Result};
use crate::oci::{self, ProcConfig};
use crate::pathres::{find_executable, Lookup, DEFAULT_PATH};
use crate::paths::{crun_state, BUNDLE, CONTAINER_PIDFILE, CRUN, ID, ROOTFS};
use crate::reaper::{self, cstrings, Cmd};
use crate::users::Ids;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

/// The argument that makes this binary the stand-in instead of the VM's init.
pub const INIT_ARG: &str = "fcvm-container-init";
/// At most this many names on the PATH are looked up ahead (an image's PATH rarely holds
/// more; past it, a restored run looks its command up itself).
const INDEX_LIMIT: usize = 4096;
/// Where crun's errors from creating the warm container go.
const ERR_FILE: &str = "/run/fcvm/warm-crun.err";

/// The stand-in's fds (as crun passes them: `--preserve-fds` keeps 3 and up).
const SPEC_FD: i32 = 3;
const STATUS_FD: i32 = 4;
const EXE_FD: i32 = 5;
const STDIO_FDS: [i32; 3] = [6, 7, 8];
const NULL_FD: i32 = 9;

/// What the stand-in execs: resolved by the agent, which already checked it exists.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitSpec {
    /// The executable inside the container, symlinks resolved.
    pub path: String,
    /// Arguments, environment, directory and ids.
    pub process: ProcConfig,
    /// Whether stdin is the pipe (`-i`) or /dev/null.
    pub stdin: bool,
}

/// A created container whose stand-in waits for its command.
pub struct Warm {
    pid: i32,
    /// Our ends of the command pipe (closed once the command is written) and the status pipe.
    spec: OwnedFd,
    status_pipe: OwnedFd,
    status: Receiver<i32>,
    /// Our ends of its stdin, stdout and stderr pipes.
    stdio: [OwnedFd; 3],
}

/// The stand-in's process, exec'd, and our ends of its pipes (stdin: only with `-i`).
pub struct Started {
    pub pid: i32,
    pub status: Receiver<i32>,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

static WARM: Mutex<Option<Warm>> = Mutex::new(None);

/// What [`prefetch`] found, kept for the first Start: the files cannot have changed while
/// the stand-in waits, as nothing else has run in the container (a `--vm` process could
/// write to its files: [`forget_lookups`]).
pub struct Lookups {
    /// The container's passwd and group, parsed.
    users: crate::users::Database,
    /// The PATH the executables were looked up on, from "/".
    path: String,
    /// Command name -> what `find_executable` answered.
    exes: HashMap<String, Lookup>,
}

static LOOKUPS: Mutex<Option<Arc<Lookups>>> = Mutex::new(None);

impl Lookups {
    /// `users::resolve` of `spec` in the container.
    pub fn user(&self, spec: &str) -> Result<Ids> {
        self.users.resolve(spec)
    }

    /// What `find_executable` answered for `name` on `path` from `cwd`, if it was asked. (A
    /// bare name on a PATH of absolute directories does not depend on the directory.)
    pub fn exe(&self, name: &str, path: &str, cwd: &str) -> Option<Lookup> {
        let anywhere = !name.contains('/') && path.split(':').all(|d| d.starts_with('/'));
        (path == self.path && (cwd == "/" || anywhere))
            .then(|| self.exes.get(name).cloned())
            .flatten()
    }
}

/// The lookups made before the snapshot, while they are still true.
pub fn lookups() -> Option<Arc<Lookups>> {
    LOOKUPS.lock().ok().and_then(|l| l.clone())
}

/// Drops the lookups (something ran that could change the container's files).
pub fn forget_lookups() {
    if let Ok(mut l) = LOOKUPS.lock() {
        *l = None;
    }
}

/// Creates the warm container (no-op if a container exists already); `privileged`: as
/// `ContainerPlan::privileged`.
pub fn create(privileged: bool) -> Result<()> {
    if crun_state().exists() {
        return Ok(());
    }
    let stand_in = ProcConfig {
        args: vec![format!("/proc/self/fd/{EXE_FD}"), INIT_ARG.into()],
        env: vec![reaper::HELPER_ENV.into()],
        cwd: "/".into(),
        privileged,
        ..Default::default()
    };
    let cfg = oci::spec(&stand_in)?;
    oci::write_json(&Path::new(BUNDLE).join("config.json"), &cfg)?;
    let exe = std::fs::File::open("/proc/self/exe")
        .map_err(|e| Error::Open("/proc/self/exe".into(), e))?;
    // crun's own stdin and stdout, and the stand-in's stdin for runs without `-i`.
    let null = reaper::dev_null().map_err(|e| Error::Open("/dev/null".into(), e))?;
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(Error::Pipe);
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
    let ((spec_r, spec_w), (status_r, status_w)) = (pipe()?, pipe()?);
    let err = std::fs::File::create(ERR_FILE).map_err(|e| Error::Open(ERR_FILE.into(), e))?;
    let _ = std::fs::remove_file(CONTAINER_PIDFILE);
    let argv = [
        CRUN,
        "run",
        "--detach",
        "--bundle",
        BUNDLE,
        "--pid-file",
        CONTAINER_PIDFILE,
        "--preserve-fds",
        "7",
        ID,
    ];
    let argv = cstrings(&argv)?;
    let cmd = Cmd {
        path: argv[0].clone(),
        argv,
        envp: cstrings(&[reaper::HELPER_ENV])?,
        cwd: None,
        ids: None,
        stdio: [null.as_raw_fd(), null.as_raw_fd(), err.as_raw_fd()],
        // In the order of SPEC_FD, STATUS_FD, EXE_FD, STDIO_FDS, NULL_FD.
        extra: vec![
            spec_r.as_raw_fd(),
            status_w.as_raw_fd(),
            exe.as_raw_fd(),
            in_r.as_raw_fd(),
            out_w.as_raw_fd(),
            err_w.as_raw_fd(),
            null.as_raw_fd(),
        ],
        ctty: false,
        fixed_layout: true,
    };
    let (_, rx) = reaper::spawn(&cmd).map_err(|e| Error::Spawn(CRUN.into(), e))?;
    // The status pipe's only writer must be the stand-in: its exec then closes it.
    drop((spec_r, status_w, exe, null, err));
    drop((in_r, out_w, err_w));
    let code = rx.recv().map(reaper::exit_code).unwrap_or(255);
    if code != 0 {
        let msg = std::fs::read_to_string(ERR_FILE).unwrap_or_default();
        let _ = reaper::run_quiet(&[CRUN, "delete", "--force", ID]);
        return Err(Error::CreateWarm {
            code,
            stderr: msg.trim().into(),
        });
    }
    let pid = std::fs::read_to_string(CONTAINER_PIDFILE)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .ok_or(Error::NoPidFile)?;
    let status = reaper::adopt(pid);
    // The first Start's output pump then finds a thread waiting (crate::pool).
    crate::pool::prestart(1);
    if let Ok(mut w) = WARM.lock() {
        *w = Some(Warm {
            pid,
            spec: spec_w,
            status_pipe: status_r,
            status,
            stdio: [in_w, out_r, err_r],
        });
    }
    Ok(())
}

/// Looks up every executable on `path` (the container's PATH; empty: the default) — which
/// also brings their directories and inodes into the caches the snapshot keeps — and reads
/// the executables of `commands`, their ELF interpreters and the user database into the page
/// cache. Best effort: a miss only costs the restored run a lookup or a disk read.
pub fn prefetch(commands: &[String], path: &str) {
    let root = Path::new(ROOTFS);
    let path = if path.is_empty() { DEFAULT_PATH } else { path };
    let mut memo = Lookups {
        users: crate::users::Database::read(root),
        path: path.to_string(),
        exes: crate::pathres::index(root, path, INDEX_LIMIT),
    };
    for name in commands {
        let found = match memo.exes.get(name) {
            Some(l) => l.clone(),
            None => find_executable(root, name, path, "/"),
        };
        memo.exes.insert(name.clone(), found.clone());
        if let Lookup::Found { host, .. } = found {
            let Ok(bytes) = std::fs::read(&host) else {
                continue;
            };
            if let Some(interp) = elf_interpreter(&bytes) {
                if let Lookup::Found { host, .. } = find_executable(root, &interp, "", "/") {
                    let _ = std::fs::read(host);
                }
            }
        }
    }
    if let Ok(mut l) = LOOKUPS.lock() {
        *l = Some(Arc::new(memo));
    }
}

/// The PT_INTERP path of a 64-bit little-endian ELF file, if it has one.
fn elf_interpreter(b: &[u8]) -> Option<String> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    if b.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(0x20)? as usize, u16_at(0x36)?, u16_at(0x38)?);
    (0..phnum as usize).find_map(|i| {
        let ph = phoff + i * phentsize as usize;
        const PT_INTERP: u32 = 3;
        let typ = u32::from_le_bytes(b.get(ph..ph + 4)?.try_into().ok()?);
        if typ != PT_INTERP {
            return None;
        }
        let (off, size) = (u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize);
        let s = b.get(off..off + size)?;
        Some(
            String::from_utf8_lossy(s)
                .trim_end_matches('\0')
                .to_string(),
        )
    })
}

/// The warm container, if one waits (taking it: it serves one Start, and the lookups made
/// for it will no longer hold).
pub fn take() -> Option<Warm> {
    forget_lookups();
    WARM.lock().ok().and_then(|mut w| w.take())
}

/// Ends a warm container that will not be used (power-off).
pub fn discard() {
    if let Some(w) = take() {
        // SAFETY: kill(2) on the stand-in we adopted.
        unsafe { libc::kill(w.pid, libc::SIGKILL) };
    }
}

impl Warm {
    /// Hands the stand-in its command; returns once it exec'd (or failed to: `Spawn` with
    /// the stand-in's errno).
    pub fn start(self, spec: &InitSpec) -> Result<Started> {
        let msg = postcard::to_allocvec(spec).map_err(Error::EncodeInitSpec)?;
        // Closing our end (the drop) is what ends the stand-in's read.
        std::fs::File::from(self.spec)
            .write_all(&msg)
            .map_err(Error::HandOver)?;
        let mut status = String::new();
        std::fs::File::from(self.status_pipe)
            .read_to_string(&mut status)
            .map_err(Error::HearBack)?;
        if !status.is_empty() {
            let errno: i32 = status.trim().parse().unwrap_or(libc::EIO);
            let e = std::io::Error::from_raw_os_error(errno);
            return Err(Error::Spawn(spec.path.clone(), e));
        }
        let [stdin, stdout, stderr] = self.stdio;
        Ok(Started {
            pid: self.pid,
            status: self.status,
            stdin: spec.stdin.then_some(stdin),
            stdout,
            stderr,
        })
    }
}

/// The stand-in (this binary as the container's process): waits for its command, then
/// becomes it. Never returns.
pub fn container_init() -> ! {
    let fail = |errno: i32| -> ! {
        let msg = errno.to_string();
        // SAFETY: writing a short message to our status pipe, then exiting.
        unsafe {
            libc::write(STATUS_FD, msg.as_ptr().cast(), msg.len());
            libc::_exit(if errno == libc::ENOENT { 127 } else { 126 })
        }
    };
    reset_signals();
    let mut buf = Vec::with_capacity(1 << 16);
    // SAFETY: SPEC_FD is the command pipe crun passed us; nothing else owns it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(SPEC_FD) };
    if pipe.read_to_end(&mut buf).is_err() || buf.is_empty() {
        std::process::exit(1); // the agent let go of us: nothing to run
    }
    drop(pipe);
    let Ok(InitSpec {
        path,
        process: spec,
        stdin,
    }) = postcard::from_bytes::<InitSpec>(&buf)
    else {
        fail(libc::EINVAL)
    };
    let stdio = [
        if stdin { STDIO_FDS[0] } else { NULL_FD },
        STDIO_FDS[1],
        STDIO_FDS[2],
    ];
    // SAFETY: single-threaded fresh process arranging its own fds, ids and directory; every
    // pointer passed lives until the exec.
    unsafe {
        for (i, fd) in stdio.into_iter().enumerate() {
            if libc::dup2(fd, i as i32) < 0 {
                fail(errno());
            }
        }
        for fd in EXE_FD..=NULL_FD {
            libc::close(fd);
        }
        // Changing ids that are already right would only cost (three new sets of
        // credentials); the stand-in runs as root with no supplementary groups, as root does
        // in most images.
        let unchanged = libc::getuid() == spec.uid
            && libc::getgid() == spec.gid
            && groups().is_some_and(|g| same_set(&g, &spec.groups));
        if !unchanged
            && (libc::setgroups(spec.groups.len(), spec.groups.as_ptr()) != 0
                || libc::setgid(spec.gid) != 0
                || libc::setuid(spec.uid) != 0)
        {
            fail(errno());
        }
        let (Ok(cwd), Ok(path), Ok(args), Ok(env)) = (
            std::ffi::CString::new(spec.cwd.as_str()),
            std::ffi::CString::new(path.as_str()),
            cstrings(&spec.args),
            cstrings(&spec.env),
        ) else {
            fail(libc::EINVAL)
        };
        // The stand-in was created in "/" (see `create`): only another directory is a change.
        if spec.cwd != "/" && libc::chdir(cwd.as_ptr()) != 0 {
            fail(errno());
        }
        libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC);
        let (argv, envp) = (
            reaper::null_terminated(&args),
            reaper::null_terminated(&env),
        );
        libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(errno())
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// This process's supplementary groups (None: more than we asked for).
fn groups() -> Option<Vec<u32>> {
    let mut g = vec![0 as libc::gid_t; 256];
    // SAFETY: getgroups writes at most `g.len()` ids into `g`.
    let n = unsafe { libc::getgroups(g.len() as i32, g.as_mut_ptr()) };
    g.truncate(usize::try_from(n).ok()?);
    Some(g)
}

fn same_set(a: &[u32], b: &[u32]) -> bool {
    a.iter().all(|x| b.contains(x)) && b.iter().all(|x| a.contains(x))
}

/// The user's process must not inherit Rust's ignored SIGPIPE or any mask.
fn reset_signals() {
    // SAFETY: resetting this process's own signal dispositions and mask.
    unsafe {
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_elf_interpreter_of_a_dynamic_binary_and_none_of_a_static_one() {
        let sh = std::fs::read("/bin/sh").expect("/bin/sh");
        let interp = super::elf_interpreter(&sh).expect("/bin/sh is dynamic here");
        assert!(
            interp.starts_with("/lib") && interp.contains("ld-linux"),
            "{interp}"
        );
        let agent = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let _ = super::elf_interpreter(&agent); // the test binary: dynamic or not, no panic
        assert_eq!(super::elf_interpreter(b"#!/bin/sh\n"), None);
        assert_eq!(
            super::elf_interpreter(&sh[..70]),
            None,
            "a truncated header"
        );
    }

    #[test]
    fn remembered_lookups_answer_only_what_was_asked() {
        use super::{Lookup, Lookups, DEFAULT_PATH};
        let found = Lookup::Found {
            inside: "/bin/busybox".into(),
            host: "/r/bin/busybox".into(),
        };
        let m = Lookups {
            users: crate::users::Database::parse(
                "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
                "root:x:0:\napp:x:1000:\n",
            ),
            path: DEFAULT_PATH.into(),
            exes: [("echo", &found), ("./run", &found)]
                .into_iter()
                .map(|(n, l)| (n.to_string(), l.clone()))
                .collect(),
        };
        assert_eq!(m.exe("echo", DEFAULT_PATH, "/"), Some(found.clone()));
        assert_eq!(m.exe("echo", "/bin", "/"), None, "another PATH");
        // A bare name on absolute directories is found wherever the process starts...
        assert_eq!(m.exe("echo", DEFAULT_PATH, "/tmp"), Some(found.clone()));
        // ... a relative path is not.
        assert_eq!(m.exe("./run", DEFAULT_PATH, "/"), Some(found));
        assert_eq!(
            m.exe("./run", DEFAULT_PATH, "/tmp"),
            None,
            "another directory"
        );
        assert_eq!(m.exe("cat", DEFAULT_PATH, "/"), None);
        let app = m.user("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert!(m.user("nobody").is_err());
    }
}
