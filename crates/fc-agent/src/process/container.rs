//! `Start{Container}`: the container's main process, once per VM.
//!
//! - A warm container ([`crate::warm`]) waits: its stand-in is handed the command and execs it
//!   (not for a TTY run: crun makes the terminal when it creates the container; taking the warm
//!   container then just lets `crun delete` end it);
//! - otherwise `crun run` with the container's config, and `Started` only once crun has
//!   created the container ([`announce_when_created`]).

use super::command::Command;
use super::spawn::{spawn, Announce, Spawned, Stdio};
use crate::error::{Error, Result};
use crate::oci;
use crate::paths::{crun_state, BUNDLE, CONTAINER_PIDFILE, CRUN, ID, ROOTFS};
use crate::reaper;
use crate::stream::{set_winsize, Stream};
use fcvm_proto::{Msg, ProcessSpec, Target};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Starts the container's process (see the module docs).
pub fn run(spec: &ProcessSpec, cmd: &Command) -> Result<Spawned> {
    if cmd.cwd != "/" {
        // The workdir need not exist in the image (crun would fail on it).
        let _ = std::fs::create_dir_all(Path::new(ROOTFS).join(cmd.cwd.trim_start_matches('/')));
    }
    match crate::warm::take().filter(|_| !spec.tty) {
        Some(w) => {
            let init = crate::warm::InitSpec {
                path: cmd.inside.clone(),
                process: cmd.process.clone(),
                stdin: spec.stdin,
            };
            let s = w.start(&init).map_err(|e| {
                let errno = match &e {
                    Error::Spawn(_, io) => io.raw_os_error(),
                    _ => None,
                };
                Error::from_exec_errno(errno, &cmd.name, Target::Container).unwrap_or(e)
            })?;
            Ok(Spawned {
                pid: s.pid,
                status: s.status,
                outputs: vec![(s.stdout, false), (s.stderr, true)],
                stdin: s.stdin,
                tty: None,
                pidfile: Some(PathBuf::from(CONTAINER_PIDFILE)),
                started: Announce::Now,
            })
        }
        None => crun_run(spec, cmd),
    }
}

/// `crun run` of the container with `cmd` as its process.
fn crun_run(spec: &ProcessSpec, cmd: &Command) -> Result<Spawned> {
    let mut cfg = oci::spec(&cmd.process)?;
    if spec.tty {
        // As podman does: crun gives the process a pty of the container's own (its
        // controlling terminal: ^C reaches the foreground job, job control works),
        // binds it at /dev/console, and relays it to ours.
        if let Some(p) = cfg.process_mut() {
            p.set_terminal(Some(true));
        }
    }
    oci::write_json(&Path::new(BUNDLE).join("config.json"), &cfg)?;
    if crun_state().exists() {
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
    let size = spec.tty.then_some((spec.rows.max(1), spec.cols.max(1)));
    let io = Stdio::new(size, spec.stdin)?;
    let run = super::spawn::crun_cmd(&argv, &io, spec.tty)?;
    let spawned = spawn(&run, Target::Container, &cmd.name)?;
    let pidfile = Some(PathBuf::from(CONTAINER_PIDFILE));
    Ok(io.spawned(spawned, pidfile, Announce::WhenCreated(size)))
}

/// "Started" for the container means crun has created it (its pid file exists): only then can
/// `crun exec` join it. The host opens execs and health checks on this signal, never on a
/// guess (docs/design.md §8). Waits on a pool thread; `size`: the pty's, which crun's `run`
/// does not give the pty it makes for a TTY container.
pub fn announce_when_created(s: Arc<Stream>, size: Option<(u16, u16)>) {
    let _ = crate::pool::run(Box::new(move || {
        let pidfile = s.pidfile.clone().unwrap_or_default();
        wait_for_file(&pidfile, || s.finished());
        if let Some((rows, cols)) = size {
            size_container_pty(&s, rows, cols);
        }
        if !s.finished() {
            let spawn_us = s.t0.elapsed().as_micros() as u64;
            s.send(Msg::Started {
                pid: s.pid as u32,
                spawn_us,
            });
        }
    }));
}

/// Returns once `file` exists or `done()` holds. Sleeps on an inotify watch of the file's
/// directory (set before the first look, so no creation is missed): a poll loop woke the
/// emulated guest every 2 ms for as long as crun worked (~0.1–0.2 s after a restore).
/// `done` is looked at every 100 ms and after each event; without inotify, every 2 ms.
fn wait_for_file(file: &Path, done: impl Fn() -> bool) {
    use nix::poll::{poll, PollFd, PollFlags};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use std::os::fd::AsFd;
    let watch = file.parent().and_then(|dir| {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).ok()?;
        let mask = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO;
        inotify.add_watch(dir, mask).ok()?;
        Some(inotify)
    });
    while !done() && !file.exists() {
        let Some(inotify) = &watch else {
            std::thread::sleep(std::time::Duration::from_millis(2));
            continue;
        };
        let mut p = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        if poll(&mut p, 100u16).is_ok_and(|n| n > 0) {
            // Readable, so no wait: the events only say to look again.
            let _ = inotify.read_events();
        }
    }
}

/// Sizes crun's pty once the container's stdin is that pty, before `Started`. Should the
/// process have looked already, the resize's SIGWINCH tells it.
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

#[cfg(test)]
mod tests {
    use super::wait_for_file;
    use std::time::{Duration, Instant};

    /// The wait ends when the file appears (made by another thread meanwhile), or at once
    /// when `done` holds although it never does.
    #[test]
    fn waits_for_a_file_or_until_done() {
        let dir = std::env::temp_dir().join(format!("fc-agent-wait-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pid");
        let f2 = file.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::write(f2, "42").unwrap();
        });
        wait_for_file(&file, || false);
        assert!(file.exists());
        t.join().unwrap();
        let t0 = Instant::now();
        wait_for_file(&dir.join("never"), || {
            t0.elapsed() > Duration::from_millis(300)
        });
        assert!(!dir.join("never").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
