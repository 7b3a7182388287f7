//! A minimal QMP client: JSON lines over the VM's `qmp.sock`.
//!
//! Only [`super::persist`] uses it, for the lifecycle verbs (stop, migrate with `x-ignore-shared`, incoming
//! migration, cont) and status queries. Each command waits for its own `return` or `error`;
//! the only event read is a migration's end (`MIGRATION`), so no one polls for it. Migration
//! streams go through a file descriptor that fcvm opens and hands over (`getfd` with
//! SCM_RIGHTS, then `fd:NAME`): no `exec:cat` process per restore.

use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("Cannot connect to QMP at {0}")]
    Connect(String, #[source] std::io::Error),
    #[error("QMP connection closed")]
    Closed,
    #[error("QMP I/O failed")]
    Io(#[from] std::io::Error),
    #[error("QMP {0} failed: {1}")]
    Command(String, String),
    #[error("QMP sent invalid JSON")]
    Json(#[from] serde_json::Error),
    #[error("QMP {0} did not finish within {1:?}")]
    Timeout(String, Duration),
}

pub struct Qmp {
    /// Lines, not `read_line`: waiting for an event gives up now and then, and a cancelled
    /// `next_line` keeps what it had read of a line.
    rd: Lines<BufReader<OwnedReadHalf>>,
    wr: OwnedWriteHalf,
}

impl Qmp {
    /// Connects (retrying while QEMU creates the socket) and negotiates capabilities.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let start = Instant::now();
        let stream = loop {
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(e) if start.elapsed() > timeout => {
                    return Err(QmpError::Connect(path.display().to_string(), e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        let (rd, wr) = stream.into_split();
        let mut q = Qmp {
            rd: BufReader::new(rd).lines(),
            wr,
        };
        q.read_msg().await?; // greeting
        q.execute("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    async fn read_msg(&mut self) -> Result<Value, QmpError> {
        let line = self.rd.next_line().await?.ok_or(QmpError::Closed)?;
        Ok(serde_json::from_str(&line)?)
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, cmd: &str, args: Value) -> Result<Value, QmpError> {
        let msg = json!({ "execute": cmd, "arguments": args });
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(b'\n');
        self.wr.write_all(&bytes).await?;
        self.reply(cmd).await
    }

    /// `getfd`: QEMU keeps a copy of `fd` under `name` (for `fd:NAME` URIs).
    pub async fn send_fd(&mut self, name: &str, fd: impl AsFd) -> Result<(), QmpError> {
        let msg = json!({ "execute": "getfd", "arguments": { "fdname": name } });
        let mut bytes = serde_json::to_vec(&msg)?;
        bytes.push(b'\n');
        let sock: &UnixStream = self.wr.as_ref();
        let fds = [fd.as_fd().as_raw_fd()];
        loop {
            sock.writable().await?;
            // The fd must travel with the command's bytes: one sendmsg, not write_all.
            let sent = sock.try_io(Interest::WRITABLE, || {
                let rights = [ControlMessage::ScmRights(&fds)];
                let iov = [IoSlice::new(&bytes)];
                let flags = MsgFlags::MSG_NOSIGNAL;
                sendmsg::<()>(sock.as_raw_fd(), &iov, &rights, flags, None)
                    .map_err(std::io::Error::from)
            });
            match sent {
                // The fd went with the first byte; the rest of the command may follow.
                Ok(n) => {
                    self.wr.write_all(&bytes[n..]).await?;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
        self.reply("getfd").await.map(|_| ())
    }

    /// Starts loading a migration stream from `f` (`-incoming defer` VMs).
    pub async fn migrate_in_from(&mut self, f: &std::fs::File) -> Result<(), QmpError> {
        self.send_fd("incoming", f).await?;
        let uri = json!({ "uri": "fd:incoming" });
        self.execute("migrate-incoming", uri).await.map(|_| ())
    }

    /// Starts writing the VM's migration stream into `f`.
    pub async fn migrate_to(&mut self, f: &std::fs::File) -> Result<(), QmpError> {
        self.send_fd("outgoing", f).await?;
        self.execute("migrate", json!({ "uri": "fd:outgoing" }))
            .await
            .map(|_| ())
    }

    async fn reply(&mut self, cmd: &str) -> Result<Value, QmpError> {
        loop {
            let v = self.read_msg().await?;
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                let desc = e["desc"].as_str().unwrap_or("unknown error").to_string();
                return Err(QmpError::Command(cmd.into(), desc));
            }
            return Ok(v.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    pub async fn status(&mut self) -> Result<String, QmpError> {
        let v = self.execute("query-status", json!({})).await?;
        Ok(v["status"].as_str().unwrap_or("").to_string())
    }

    /// `x-ignore-shared`: leave shared RAM (the VM's RAM file) out of the migration stream.
    /// Both ends of a stream must agree: it changes the stream's format. Also turns on
    /// `MIGRATION` events, which [`Qmp::wait_migration`] waits for.
    pub async fn set_ignore_shared(&mut self, on: bool) -> Result<(), QmpError> {
        let caps = json!([
            {"capability": "x-ignore-shared", "state": on},
            {"capability": "events", "state": true},
        ]);
        self.execute("migrate-set-capabilities", json!({ "capabilities": caps }))
            .await
            .map(|_| ())
    }

    /// Waits until the current migration (outgoing or incoming) completes: asks, then waits
    /// for its `MIGRATION` event (asking again now and then, should events be off).
    pub async fn wait_migration(&mut self, timeout: Duration) -> Result<(), QmpError> {
        const ASK_AGAIN: Duration = Duration::from_millis(50);
        let start = Instant::now();
        loop {
            let v = self.execute("query-migrate", json!({})).await?;
            if migration_over(v["status"].as_str().unwrap_or(""), &v["error-desc"])? {
                return Ok(());
            }
            let until = (start + timeout).min(Instant::now() + ASK_AGAIN);
            while let Ok(msg) = tokio::time::timeout_at(until.into(), self.read_msg()).await {
                let msg = msg?;
                // Its end: asking again gives the outcome (and a failure's reason).
                let status = msg["data"]["status"].as_str().unwrap_or("");
                if msg["event"] == "MIGRATION" && FINAL_STATUSES.contains(&status) {
                    break;
                }
            }
            if start.elapsed() > timeout {
                return Err(QmpError::Timeout("migrate".into(), timeout));
            }
        }
    }
}

/// The statuses a migration ends in.
const FINAL_STATUSES: [&str; 3] = ["completed", "failed", "cancelled"];

/// Whether a migration in `status` is over: Ok(true) once completed, an error if it failed.
fn migration_over(status: &str, why: &Value) -> Result<bool, QmpError> {
    match status {
        "completed" => Ok(true),
        "failed" | "cancelled" => {
            let why = why.as_str().unwrap_or(status).to_string();
            Err(QmpError::Command("migrate".into(), why))
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    //! The client against a scripted QMP peer on a Unix socket: no QEMU needed.
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// Serves one client: the greeting, then for each expected command its scripted lines.
    async fn peer(
        listener: tokio::net::UnixListener,
        script: Vec<(&'static str, Vec<&'static str>)>,
    ) -> Vec<String> {
        let (s, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = s.into_split();
        let mut lines = BufReader::new(rd).lines();
        wr.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .unwrap();
        let mut seen = vec![];
        for (cmd, replies) in
            std::iter::once(("qmp_capabilities", vec![r#"{"return": {}}"#])).chain(script)
        {
            let line = lines.next_line().await.unwrap().unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["execute"], cmd, "{line}");
            seen.push(line);
            for r in replies {
                wr.write_all(format!("{r}\n").as_bytes()).await.unwrap();
            }
        }
        seen
    }

    #[tokio::test]
    async fn commands_errors_and_events() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("qmp.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(peer(
            l,
            vec![
                // An event before the reply is skipped.
                (
                    "query-status",
                    vec![
                        r#"{"event": "RESUME", "data": {}}"#,
                        r#"{"return": {"status": "running"}}"#,
                    ],
                ),
                (
                    "cont",
                    vec![r#"{"error": {"class": "GenericError", "desc": "no"}}"#],
                ),
                // Active, then its MIGRATION event, then asked again: completed.
                ("query-migrate", vec![r#"{"return": {"status": "active"}}"#]),
                (
                    "query-migrate",
                    vec![r#"{"return": {"status": "completed"}}"#],
                ),
            ],
        ));
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(q.status().await.unwrap(), "running");
        let e = q.execute("cont", json!({})).await.unwrap_err();
        assert!(
            matches!(&e, QmpError::Command(c, d) if c == "cont" && d == "no"),
            "{e}"
        );
        // The event arrives while the client waits between its two questions.
        let wait = q.wait_migration(Duration::from_secs(5));
        wait.await.unwrap();
        drop(q);
        assert_eq!(server.await.unwrap().len(), 5);
    }

    #[tokio::test]
    async fn a_failed_migration_says_why_and_a_closed_peer_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("qmp.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(peer(
            l,
            vec![(
                "query-migrate",
                vec![r#"{"return": {"status": "failed", "error-desc": "bad stream"}}"#],
            )],
        ));
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let e = q.wait_migration(Duration::from_secs(5)).await.unwrap_err();
        assert!(format!("{e}").contains("bad stream"), "{e}");
        server.await.unwrap();
        let e = q.execute("stop", json!({})).await.unwrap_err();
        assert!(matches!(e, QmpError::Closed | QmpError::Io(_)), "{e}");
    }

    #[tokio::test]
    async fn getfd_passes_a_descriptor_with_the_command() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("qmp.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"{\"QMP\": {}}\n").unwrap();
            let mut r = std::io::BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            s.write_all(b"{\"return\": {}}\n").unwrap();
            // The getfd command: receive it with its descriptor.
            let mut buf = [0u8; 256];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = nix::sys::socket::recvmsg::<()>(
                s.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .unwrap();
            let fds: Vec<_> = msg
                .cmsgs()
                .unwrap()
                .filter_map(|c| match c {
                    nix::sys::socket::ControlMessageOwned::ScmRights(f) => Some(f),
                    _ => None,
                })
                .flatten()
                .collect();
            s.write_all(b"{\"return\": {}}\n").unwrap();
            fds.len()
        });
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).await.unwrap();
        let f = tempfile::tempfile().unwrap();
        q.send_fd("outgoing", &f).await.unwrap();
        assert_eq!(server.join().unwrap(), 1);
    }
}
